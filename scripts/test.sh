#!/usr/bin/env bash
# The project's one test command (README): installs what the tests need, then
# runs formatting, lints and every test, unit and integration, in the workspace.
#
# Environment:
#   SKIP_INSTALL=1  do not run scripts/install-deps.sh (packages already there)
#   FUZZ_RUNS=N     new inputs per fuzz target (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests that need the guest image, QEMU or Ceph fail instead of skipping:
# everything they need is installed by scripts/install-deps.sh.
export EXTSTORAGE_GUEST_E2E_REQUIRE="${EXTSTORAGE_GUEST_E2E_REQUIRE:-1}"
# Likewise the tests that need io_uring (Docker's default seccomp profile
# blocks it), loop devices or cachestat (Linux 6.5).
export EXTSTORAGE_REQUIRE_URING="${EXTSTORAGE_REQUIRE_URING:-1}"
export EXTSTORAGE_REQUIRE_LOOP_DEVICES="${EXTSTORAGE_REQUIRE_LOOP_DEVICES:-1}"
export EXTSTORAGE_REQUIRE_CACHESTAT="${EXTSTORAGE_REQUIRE_CACHESTAT:-1}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    scripts/install-deps.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== shellcheck"
# Every shell script, following the common.sh each provider script sources
# (common.sh has no shebang: -s bash). providers/rbd, for now, without the
# checks whose findings there are intended (a fix is for its owner, as
# per-line directives): SC2016 the single-quoted at_exit commands expand at
# exit, SC2034 variables set for the scripts that source common.sh or read
# by those at_exit commands, SC2015 'A && B || die' lines where die is
# right either way, SC2020 tr with ',;' meant as a set of characters.
mapfile -t sh_files < <(find providers scripts -type f ! -name parameters.list ! -path 'providers/rbd/*' | sort)
shellcheck -x -P SCRIPTDIR -s bash "${sh_files[@]}"
mapfile -t sh_files < <(find providers/rbd -type f ! -name parameters.list | sort)
shellcheck -x -P SCRIPTDIR -s bash -e SC2015,SC2016,SC2020,SC2034 "${sh_files[@]}"
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
results=$(mktemp)
trap 'rm -f "$results"' EXIT
echo "== cargo test --doc"
cargo test --workspace --doc 2>&1 | tee -a "$results"
echo "== cargo test"
cargo test --workspace --all-targets 2>&1 | tee -a "$results"

# Release binaries carry no test-only fault injection (feature test-hooks).
echo "== release binaries"
scripts/check-release.sh

# The fuzz crate (fuzz/, its own workspace): formatted, lint-free, its seeds
# current and checked, then every target over its seeds plus a fixed number
# of new inputs (fixed RNG seed), so the targets keep building and passing.
echo "== cargo fuzz"
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
# Sharing target/ with the workspace reuses the crates built above.
CARGO_TARGET_DIR=target cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
CARGO_TARGET_DIR=target cargo test --manifest-path fuzz/Cargo.toml 2>&1 | tee -a "$results"
scripts/fuzz.sh --check "${FUZZ_RUNS:-20000}"

# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$results"
