# The usual names. `make test` is exactly what CI runs.
.PHONY: fmt lint test bench bench-core bench-log

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	scripts/test

bench: bench-core bench-log

bench-core:
	cargo run --release -p canopy-bench -- core

bench-log:
	cargo run --release -p canopy-bench -- log
