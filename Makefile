# The usual names. `make test` is exactly what CI runs.
.PHONY: fmt lint test bench bench-core bench-record bench-log bench-http bench-merkle gas

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

test:
	scripts/test

# Every benchmark once from one release build, their figures into one file.
bench:
	scripts/bench-all

bench-core:
	cargo run --release -p canopy-bench -- core

bench-record:
	cargo run --release -p canopy-bench -- core --record

bench-log:
	cargo run --release -p canopy-bench -- log

bench-http:
	cargo run --release -p canopy-bench -- http

bench-merkle:
	cargo run --release -p canopy-bench -- merkle

gas:
	scripts/contracts-test --gas
