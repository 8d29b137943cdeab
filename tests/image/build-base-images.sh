#!/usr/bin/env bash
# Build local stand-ins for the base images docker/Dockerfile names, under the
# official names, so the Dockerfile is built unchanged on a machine that cannot
# pull from a registry.
#
# Usage: tests/image/build-base-images.sh [--force]
#
#   debian:bookworm-slim       debootstrap (minbase) from the host's Debian mirror
#   python:3.12-slim-bookworm  that base plus the host's pyenv CPython 3.12 in /usr/local
#   rust:1-slim-bookworm       that base plus the host's stable Rust toolchain and rustup
#
# An image that exists and was made from the same sources (recorded in the
# label fastserve.stand-in.source) is kept; --force rebuilds all three.
# Needs root, podman and debootstrap. CONTAINERS_CONF defaults to
# tests/image/containers.conf. The names can be changed with DEBIAN_IMAGE,
# PYTHON_IMAGE and RUST_IMAGE; PYTHON_VERSION picks the interpreter (3.12).
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd -- "$here/../.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-debian:bookworm-slim}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.12-slim-bookworm}
RUST_IMAGE=${RUST_IMAGE:-rust:1-slim-bookworm}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
SUITE=bookworm
# Used when the host has no deb822 sources file to read a mirror from.
DEFAULT_MIRROR=http://deb.debian.org/debian
SOURCE_LABEL=fastserve.stand-in.source

force=0
if [[ ${1:-} == --force ]]; then
    force=1
elif (($# > 0)); then
    echo "error: unknown argument \"$1\"; usage: $0 [--force]" >&2
    exit 2
fi

for tool in podman debootstrap; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool not found; install it with 'apt-get install podman debootstrap'" >&2
        exit 1
    fi
done

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT

# Succeed when IMAGE exists and its source label equals SOURCE: is_current IMAGE SOURCE
is_current() {
    local image=$1 source=$2 recorded
    ((force == 0)) || return 1
    podman image exists "$image" || return 1
    recorded=$(podman image inspect --format "{{ index .Labels \"$SOURCE_LABEL\" }}" "$image")
    [[ $recorded == "$source" ]]
}

# Print the first mirror URI of the host's Debian sources, or the default.
debian_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources mirror=""
    if [[ -f $sources ]]; then
        mirror=$(awk '/^URIs:/ { print $2; exit }' "$sources")
    fi
    echo "${mirror:-$DEFAULT_MIRROR}"
}

build_debian() {
    local mirror source rootfs started=$SECONDS
    mirror=$(debian_mirror)
    source="debootstrap $SUITE minbase $mirror"
    if is_current "$DEBIAN_IMAGE" "$source"; then
        echo "base images: $DEBIAN_IMAGE is current, kept"
        return
    fi

    echo "base images: building $DEBIAN_IMAGE with debootstrap from $mirror"
    rootfs=$work_dir/rootfs
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$work_dir/debootstrap.log" 2>&1 || {
        tail -n 30 "$work_dir/debootstrap.log" >&2
        echo "error: debootstrap of $SUITE from $mirror failed" >&2
        return 1
    }
    # What debootstrap leaves behind that an image should not carry.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    tar --numeric-owner -C "$rootfs" -c . |
        podman import --quiet --change 'CMD ["bash"]' --change "LABEL $SOURCE_LABEL=\"$source\"" \
            - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
    echo "base images: $DEBIAN_IMAGE built in $((SECONDS - started)) s"
}

build_python() {
    local python prefix full_version source started=$SECONDS
    python=$(find_python_version "$PYTHON_VERSION")
    prefix=$("$python" -c 'import sys; print(sys.base_prefix)')
    full_version=$("$python" -c 'import platform; print(platform.python_version())')
    source="cpython $full_version from $prefix on $DEBIAN_IMAGE $(podman image inspect --format '{{.Id}}' "$DEBIAN_IMAGE")"
    if is_current "$PYTHON_IMAGE" "$source"; then
        echo "base images: $PYTHON_IMAGE is current, kept"
        return
    fi

    echo "base images: building $PYTHON_IMAGE from CPython $full_version in $prefix"
    podman build --pull=never --format docker \
        --build-context "cpython=$prefix" \
        --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        --build-arg "SOURCE_PREFIX=$prefix" \
        --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
        --label "$SOURCE_LABEL=$source" \
        -f "$here/base-images/python.Containerfile" -t "$PYTHON_IMAGE" \
        "$here/base-images" >"$work_dir/python.log" 2>&1 || {
        tail -n 30 "$work_dir/python.log" >&2
        echo "error: building $PYTHON_IMAGE failed" >&2
        return 1
    }
    echo "base images: $PYTHON_IMAGE built in $((SECONDS - started)) s"
}

build_rust() {
    local sysroot toolchain rustup_path rust_version source started=$SECONDS
    if ! command -v rustc >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
        echo "error: rustc or rustup not found; the Rust stand-in copies the host's toolchain" >&2
        return 1
    fi
    sysroot=$(rustc --print sysroot)
    toolchain=$(basename "$sysroot")
    rustup_path=$(dirname "$(readlink -f "$(command -v rustup)")")
    rust_version=$(rustc --version | cut -d ' ' -f 2)
    source="rust $rust_version from $sysroot on $DEBIAN_IMAGE $(podman image inspect --format '{{.Id}}' "$DEBIAN_IMAGE")"
    if is_current "$RUST_IMAGE" "$source"; then
        echo "base images: $RUST_IMAGE is current, kept"
        return
    fi

    echo "base images: building $RUST_IMAGE from Rust $rust_version in $sysroot"
    podman build --pull=never --format docker \
        --build-context "toolchain=$sysroot" \
        --build-context "rustup=$rustup_path" \
        --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        --build-arg "TOOLCHAIN=$toolchain" \
        --build-arg "RUST_VERSION=$rust_version" \
        --label "$SOURCE_LABEL=$source" \
        -f "$here/base-images/rust.Containerfile" -t "$RUST_IMAGE" \
        "$here/base-images" >"$work_dir/rust.log" 2>&1 || {
        tail -n 30 "$work_dir/rust.log" >&2
        echo "error: building $RUST_IMAGE failed" >&2
        return 1
    }
    echo "base images: $RUST_IMAGE built in $((SECONDS - started)) s"
}

started=$SECONDS
build_debian
build_python
build_rust
echo "base images: ready in $((SECONDS - started)) s"
