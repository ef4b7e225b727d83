#!/usr/bin/env bash
# Create or update the project's virtualenv (.venv) with everything the tests,
# benchmarks and demo need. Safe to run again: it only reinstalls what changed.
# Downloads are cached in .cache/ (git-ignored); nothing depends on the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CACHE="$REPO/.cache"
mkdir -p "$CACHE/pip"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

apt_install() {
    # Install Debian packages that are missing (needs root, as in CI).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root or install them)"; return 1
    fi
    log "apt-get install ${missing[*]}"
    if [ ! -f "$CACHE/apt-updated" ] || [ -n "$(find "$CACHE/apt-updated" -mmin +720)" ]; then
        apt-get update -qq && touch "$CACHE/apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Hypervisor, image building and libvirt-python's build dependencies.
APT_PACKAGES=(
    libvirt-daemon libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
    qemu-system-x86 qemu-utils libvirt-dev pkg-config gcc python3-dev
    debootstrap busybox-static cpio e2fsprogs lz4 openssh-server openssh-client
    rabbitmq-server
    make musl-tools
    postgresql
    shellcheck
)
if [ "${GUEST_HA_SKIP_APT:-0}" != 1 ]; then
    apt_install "${APT_PACKAGES[@]}"
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi

STAMP=.venv/.guest-ha-installed
WANT=$(sha256sum <pyproject.toml | cut -d" " -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    log "installing guest-ha and its test dependencies into .venv"
    .venv/bin/pip install -q --cache-dir "$CACHE/pip" --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q --cache-dir "$CACHE/pip" -e '.[test]'
    echo "$WANT" > "$STAMP"
fi
# Dev-only code (test cloud, simulator, demo drivers) lives in dev/ and is not
# part of the installed product: put it on this venv's path only.
DEV_PTH="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/guest_ha_dev.pth"
[ "$(cat "$DEV_PTH" 2>/dev/null)" = "$REPO/dev" ] || echo "$REPO/dev" > "$DEV_PTH"
log "ready: $(.venv/bin/python --version)"
