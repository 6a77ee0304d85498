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
    # Stop a server still running, detach anything still backed by our
    # files, then remove the tree.
    if [ -n "${serve_pid:-}" ] && kill -0 "$serve_pid" 2>/dev/null; then
        kill -TERM "$serve_pid" || true
        wait "$serve_pid" || true
    fi
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
    "$bin" --search-path "$repo/providers" --log-dir "$work/log" --lock-dir "$work/lock" \
        --run-dir "$work/run" "$@"
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

step "serve it to QEMU over vhost-user-blk (extstorage serve, in the background)"
echo "+ extstorage serve ${vol[*]} --vcpus 2 &"
"$bin" --search-path "$repo/providers" --log-dir "$work/log" --lock-dir "$work/lock" \
    --run-dir "$work/run" serve "${vol[@]}" --vcpus 2 >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 300); do
    [ -s "$work/serve.out" ] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
cat "$work/serve.out"

step "QEMU arguments for the served volume (num-queues and socket come from the server)"
es kvm-args "${vol[@]}" --qemu-version 10.0 --access vhost-user --memory-mib 512

step "grow the served volume by 32 MiB: the server re-reads the size and tells the guest"
es grow "${vol[@]}" --amount 32M

step "the server's per-queue counters"
es status --provider loopfile --volume demo.ext.disk0

step "stop the server (SIGTERM): it drains, then runs close and detach"
kill -TERM "$serve_pid"
wait "$serve_pid"
serve_pid=
echo "server exited 0"
losetup --list --associated "$work/vols/demo.ext.disk0.img"

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
