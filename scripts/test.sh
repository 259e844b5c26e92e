#!/usr/bin/env bash
# Runs Strata's whole test suite: formatting, lints, every test, the docs, and a smoke run of the scenario
# benchmarks and the example. Works on a fresh Debian machine: it installs what is missing.
# CI calls exactly this script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

need_cargo() {
  if command -v cargo >/dev/null 2>&1; then return; fi
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return
  say "cargo not found: installing Debian's Rust toolchain"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc rustfmt rust-clippy >/dev/null
}

need_cargo
say "toolchain: $(cargo --version)"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo test"
cargo test --workspace --quiet 2>&1 | tee target/test-output.txt
# Fail loudly if the run executed no tests at all.
grep -Eq 'test result: ok\. [1-9][0-9]* passed' target/test-output.txt

say "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

say "scenario smoke runs (release)"
cargo build --release --quiet -p strata-bench --bins --examples
line=$(cargo run --release --quiet -p strata-bench -- stampede)
echo "$line"
echo "$line" | grep -q ' loader_calls=1 ' || { echo "stampede: expected loader_calls=1" >&2; exit 1; }
cargo run --release --quiet -p strata-bench -- xfetch --seconds 20
cargo run --release --quiet --example black_friday -- --requests 2000

say "all checks passed"
