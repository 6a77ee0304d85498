#!/usr/bin/env bash
# The main job on the built-in default provider: build the extstorage CLI and
# drive the reference `loopfile` provider (volumes are files attached as real
# loop devices) through a volume's whole life. Needs root (losetup).
#
# Environment:
#   PROFILE=release   build and use the release binary (default: debug)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

step() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root (loop devices)" >&2
    exit 1
fi

step "build the extstorage CLI"
if [ "${PROFILE:-debug}" = release ]; then
    cargo build --release --bin extstorage
    bin="$repo/target/release/extstorage"
else
    cargo build --bin extstorage
    bin="$repo/target/debug/extstorage"
fi

work=$(mktemp -d /tmp/extstorage-demo.XXXXXX)
cleanup() {
    # Detach anything still backed by our files, then remove the tree.
    for f in "$work"/vols/*.img; do
        [ -e "$f" ] || continue
        for dev in $(losetup --list --noheadings --output NAME --associated "$f"); do
            losetup --detach "$dev" || true
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT

es() {
    echo "+ extstorage $*"
    "$bin" --search-path "$repo/providers" --log-dir "$work/log" --lock-dir "$work/lock" "$@"
}
vol=(--provider loopfile --volume demo.ext.disk0 -p "dir=$work/vols")

step "providers: diagnosis of the search path $repo/providers"
es providers

step "create a 64 MiB volume (create, then attach)"
es create "${vol[@]}" --size 64M
dev=$("$bin" --json --search-path "$repo/providers" --log-dir "$work/log" --lock-dir "$work/lock" \
    attach "${vol[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dev_path"])')
echo "block device: $dev"
ls -l "$dev"

step "write and read back data on $dev"
msg="hello from extstorage $(date +%s)"
printf '%s' "$msg" | dd of="$dev" bs=512 seek=2048 conv=notrunc,fsync status=none
got=$(dd if="$dev" bs=512 skip=2048 count=1 iflag=direct status=none | head -c ${#msg})
echo "wrote: $msg"
echo "read:  $got"
[ "$got" = "$msg" ] || { echo "demo: read back differs" >&2; exit 1; }

step "QEMU arguments for this volume: QEMU opens the block device"
es kvm-args "${vol[@]}" --qemu-version 10.0

step "QEMU arguments when our vhost-user-blk daemon serves it"
es kvm-args "${vol[@]}" --qemu-version 10.0 --access vhost-user --socket "$work/disk0.sock" --memory-mib 512

step "grow by 32 MiB"
es grow "${vol[@]}" --size 64 --amount 32M

step "size (bytes, from the device)"
size=$(es size "${vol[@]}" | tail -n 1)
echo "$size"
[ "$size" = $((96 * 1024 * 1024)) ] || { echo "demo: expected 96 MiB" >&2; exit 1; }

step "setinfo"
es setinfo "${vol[@]}" --metadata "originstname+demo-instance"

step "snapshot"
es snapshot "${vol[@]}"
ls -ls "$work/vols"

step "detach"
es detach "${vol[@]}"
losetup --list --associated "$work/vols/demo.ext.disk0.img"

step "remove"
es remove "${vol[@]}"
ls -l "$work/vols"

step "script logs written"
ls "$work/log"

echo
echo "demo: OK"
