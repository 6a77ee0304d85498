#!/usr/bin/env bash
# The project's one test command (README): installs what the tests need, then
# runs formatting, lints and every test, unit and integration, in the workspace.
#
# Environment:
#   SKIP_INSTALL=1  do not run scripts/install-deps.sh (packages already there)
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests that need the guest image, QEMU or Ceph fail instead of skipping:
# everything they need is installed by scripts/install-deps.sh.
export EXTSTORAGE_GUEST_E2E_REQUIRE="${EXTSTORAGE_GUEST_E2E_REQUIRE:-1}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    scripts/install-deps.sh
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== cargo test"
cargo test --workspace --all-targets
echo "== cargo test --doc"
cargo test --workspace --doc
