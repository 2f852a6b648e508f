# The usual names. `make test` is exactly what CI runs.
.PHONY: fmt lint test bench bench-core bench-log bench-http

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	scripts/test

bench: bench-core bench-log bench-http

bench-core:
	cargo run --release -p canopy-bench -- core

bench-log:
	cargo run --release -p canopy-bench -- log

bench-http:
	cargo run --release -p canopy-bench -- http
