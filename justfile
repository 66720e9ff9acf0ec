# Convenience recipes; each is a `cargo xtask` command, which works without just.

# host binary (target/release/hio-host) and every guest (target/wasm/NAME.wasm)
build:
    cargo xtask build

# guest components only
guests:
    cargo xtask guests

# serve the echo guest on 127.0.0.1:56000 (extra flags go to `hio-host run`)
run *ARGS:
    cargo xtask run {{ARGS}}

# the whole test suite (what CI runs)
test:
    cargo xtask test

# benchmarks (figures in BENCHMARKS.md); extra args go to hio-bench
bench *ARGS:
    cargo xtask bench {{ARGS}}

# lints
check:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --release -- -D warnings
