#!/usr/bin/env bash
# Builds the guest used by the end-to-end test (tests/guest_e2e.rs): a Debian
# kernel and an initramfs holding busybox, the virtio modules, /init
# (tests/guest/init) and the in-guest test program (tests/guest/e2e-guest.c).
#
# Usage: scripts/build-guest.sh [OUTDIR]     (default: .work/guest in the repo)
#
# Outputs: OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz. Cached: each step is
# skipped when its output is newer than its inputs; the kernel .deb is kept in
# OUTDIR/cache. Only Debian packages are downloaded (apt-get download).
#
# Exit codes: 0 built or up to date; 77 a prerequisite is missing on this
# machine (no apt, no gcc/static libc, no busybox-static, kernel package not
# downloadable), so the caller may skip; anything else is a real failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/.work/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$repo/tests/guest
script=$repo/scripts/build-guest.sh

say() { echo "build-guest: $*"; }
skip() { echo "build-guest: SKIP: $*" >&2; exit 77; }
# Prints the first of the paths a glob gave (sorted, as ls sorts), or
# nothing when it matched nothing.
first() { if [ -e "$1" ]; then printf '%s\n' "$1"; fi; }

# Serialise concurrent runs on the same OUTDIR (parallel tests, two shells).
exec 9>"$out/.lock"
flock 9

# True when $1 exists and is newer than every other argument.
fresh() {
    local target=$1
    shift
    [ -e "$target" ] || return 1
    local f
    for f in "$@"; do
        [ "$target" -nt "$f" ] || return 1
    done
}

# The virtio modules the guest needs, in the order the tests load them; the
# dependencies of each are resolved below with modinfo, so a kernel that grows
# a new dependency still gets a loadable set.
wanted=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

for tool in apt-cache apt-get dpkg-deb cpio gzip modinfo; do
    command -v "$tool" >/dev/null || skip "$tool not found (run scripts/install-deps.sh)"
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || skip "busybox not found (install busybox-static)"
ldd_out=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
if ! grep -q 'not a dynamic executable' <<<"$ldd_out"; then
    skip "$busybox is dynamically linked; install busybox-static"
fi
command -v gcc >/dev/null || skip "gcc not found (install gcc and libc6-dev)"

# 1. The kernel package: the one linux-image-amd64 currently depends on.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
if [ -z "$kpkg" ]; then
    say "no linux-image-amd64 in the apt lists; running apt-get update"
    apt-get update -qq || skip "apt-get update failed"
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
fi
[ -n "$kpkg" ] || skip "cannot find the kernel package linux-image-amd64 depends on"
cache=$out/cache
mkdir -p "$cache"
deb=$(first "$cache/${kpkg}"_*.deb)
if [ -z "$deb" ]; then
    say "downloading $kpkg"
    if ! (cd "$cache" && apt-get download -q "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed'); then
        say "download failed; running apt-get update and retrying"
        apt-get update -qq || skip "apt-get update failed"
        (cd "$cache" && apt-get download -q "$kpkg") || skip "apt-get download $kpkg failed"
    fi
    deb=$(first "$cache/${kpkg}"_*.deb)
    [ -n "$deb" ] || skip "apt-get download $kpkg produced no .deb"
    # Drop .debs of older kernels.
    find "$cache" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$(basename "$deb")" -delete
else
    say "kernel package cached: $(basename "$deb")"
fi

# 2. Unpack vmlinuz and the modules we need.
kdir=$out/kernel
if ! fresh "$kdir/.unpacked" "$deb"; then
    say "unpacking $(basename "$deb")"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/block/virtio_blk*'
    touch "$kdir/.unpacked"
fi
vmlinuz_src=$(first "$kdir"/boot/vmlinuz-*)
[ -n "$vmlinuz_src" ] || { echo "build-guest: no vmlinuz in $deb" >&2; exit 1; }
kver=${vmlinuz_src##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver/kernel
if ! fresh "$out/vmlinuz" "$vmlinuz_src"; then
    cp "$vmlinuz_src" "$out/vmlinuz"
    say "kernel $kver -> $out/vmlinuz"
fi

# Find a module file (.ko, .ko.xz, .ko.zst, .ko.gz) by module name.
modfile() {
    find "$moddir" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" -o -name "$1.ko.gz" | head -n1
}
# Resolve dependencies depth first, so each module follows its dependencies.
order=()
declare -A seen=()
visit() {
    local m=$1 f deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    f=$(modfile "$m")
    [ -n "$f" ] || { echo "build-guest: module $m not found in $kpkg" >&2; exit 1; }
    deps=$(modinfo -F depends "$f")
    for d in ${deps//,/ }; do
        visit "$d"
    done
    order+=("$m")
}
for m in "${wanted[@]}"; do
    visit "$m"
done

# 3. The in-guest test program, static.
bin=$out/build/e2e-guest
mkdir -p "$out/build"
if ! fresh "$bin" "$src/e2e-guest.c" "$script"; then
    say "compiling $src/e2e-guest.c"
    gcc -static -O2 -Wall -Wextra -Werror -o "$bin.tmp" "$src/e2e-guest.c" ||
        skip "gcc -static failed (install gcc and libc6-dev, which has the static libc)"
    mv "$bin.tmp" "$bin"
fi

# 4. The initramfs.
initrd=$out/initramfs.cpio.gz
if fresh "$initrd" "$src/init" "$bin" "$busybox" "$kdir/.unpacked" "$script"; then
    say "up to date: $out/vmlinuz $initrd"
    exit 0
fi
root=$out/root
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
# /init installs the other applets; sh is needed before that.
ln -s busybox "$root/bin/sh"
cp "$src/init" "$root/init"
chmod 755 "$root/init"
cp "$bin" "$root/bin/e2e-guest"
: >"$root/lib/modules/order"
for m in "${order[@]}"; do
    f=$(modfile "$m")
    # busybox insmod takes plain .ko only: decompress on the host.
    case $f in
        *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/order"
done
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0) | gzip -9n >"$initrd.tmp"
mv "$initrd.tmp" "$initrd"
rm -rf "$root"
say "modules (load order): ${order[*]}"
say "built $initrd ($(stat -c %s "$initrd") bytes), kernel $out/vmlinuz"
