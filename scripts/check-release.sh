#!/usr/bin/env bash
# Builds the release binaries as scripts/install.sh does and fails if the
# test-only fault injection is in them: the EXTSTORAGE_TEST_ONLY_* variables
# and the engines they turn on (feature `test-hooks` of
# extstorage-vhost-user-blk, which only the tests build). Run by
# scripts/test.sh.
#
#   scripts/check-release.sh [--binaries DIR]   check DIR's binaries, no build
set -euo pipefail

if [ "${1:-}" = --binaries ]; then
    dir=${2:?--binaries needs a directory}
else
    cd "$(dirname "$0")/.."
    cargo build --release --locked --quiet \
        --package extstorage --package extstorage-vhost-user-blk-daemon
    dir=target/release
fi
status=0
for b in extstorage extstorage-vhost-user-blk; do
    if [ ! -f "$dir/$b" ]; then
        echo "check-release.sh: $dir/$b is missing" >&2
        status=1
        continue
    fi
    found=$(grep -a -o -E 'EXTSTORAGE_TEST_ONLY_[A-Z_]+|test-only-(hold|fault)' "$dir/$b" | sort -u | tr '\n' ' ' || true)
    if [ -n "$found" ]; then
        echo "check-release.sh: $dir/$b has the test-only hooks ($found); build it without feature test-hooks (cargo build --release)" >&2
        status=1
    else
        echo "$dir/$b: no test-only hooks"
    fi
done
exit "$status"
