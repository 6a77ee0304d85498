#!/usr/bin/env bash
# Installs every system package the project's tests and benchmarks need.
# Idempotent: packages already present are skipped, so a warm machine pays
# nothing. Run as root (CI and the dev machines are root).
#
# QEMU: Debian bookworm ships QEMU 7.2, and installing qemu-system-x86 from
# plain bookworm would REMOVE the image's qemu-utils 10. We take QEMU 10 from
# bookworm-backports, together with qemu-utils, so the two always match.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Packages from the main suites.
for p in fio busybox-static cpio gzip util-linux kmod e2fsprogs iproute2 python3 shellcheck; do
    have "$p" || need+=("$p")
done
# The end-to-end test guest (scripts/build-guest.sh): static C, module tools.
for p in gcc libc6-dev xz-utils zstd; do
    have "$p" || need+=("$p")
done
# Operations tests: libvirt's schema checker (virt-xml-validate runs
# xmllint), man page rendering (groff, man), systemd-analyze (systemd).
for p in libvirt-clients libxml2-utils groff-base man-db systemd; do
    have "$p" || need+=("$p")
done
# The fuzz targets (scripts/fuzz.sh): libFuzzer is C++.
have g++ || need+=(g++)
# Packages that must come from backports (QEMU 10).
backports=()
for p in qemu-system-x86 qemu-utils qemu-block-extra; do
    have "$p" || backports+=("$p")
done
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10\.'; then
    backports+=(qemu-system-x86 qemu-utils)
fi
if [ "${WITH_CEPH:-1}" = 1 ]; then
    # librbd1 (with librados2): the daemon's rbd engine loads them at run
    # time (dlopen); no headers are needed to build.
    for p in ceph-mon ceph-osd ceph-common librbd1; do
        have "$p" || need+=("$p")
    done
fi

if [ ${#need[@]} -eq 0 ] && [ ${#backports[@]} -eq 0 ]; then
    echo "install-deps: all system packages present"
    exit 0
fi

src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
    echo "install-deps: enabling bookworm-backports in $src"
    sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # A differently laid out sources file: add backports as its own stanza,
    # from the same mirror as the main suite.
    mirror=$(grep -rhs '^URIs:' /etc/apt/sources.list.d/*.sources | head -n 1 | awk '{print $2}')
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "install-deps: adding bookworm-backports from $mirror"
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#backports[@]} -gt 0 ]; then
    echo "install-deps: from bookworm-backports: ${backports[*]}"
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${backports[@]}"
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
