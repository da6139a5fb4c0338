#!/usr/bin/env bash
# Builds the sluice image from deploy/image/Dockerfile.
#
#   deploy/image/build.sh [--binary PATH] [--onnxruntime PATH] [--tag NAME:TAG]
#
# --binary: the `sluice` to put in the image (default: `cargo build --release`, then
#   target/release/sluice); it is stripped on the way in. It must be built for glibc <= 2.36
#   (Debian bookworm's), as it is on bookworm.
# --onnxruntime: libonnxruntime.so (1.22, e.g. from sample-models/minilm/fetch.py) to ship
#   for native graphs; without it the image runs graphs in the sandbox only.
# --tag: default sluice:<the crate's version>.
#
# The base: $BASE if set (e.g. debian:bookworm-slim from a registry, the Dockerfile's
# default); else, on a machine with no registry, an image made here from Debian's packages:
# debootstrap's minbase of bookworm (needs root and deb.debian.org), imported as
# sluice-base:bookworm, its tarball cached in $IMAGE_CACHE (default ~/.cache/sluice-ci).
set -euo pipefail
cd "$(dirname "$0")/../.."
BINARY="" ONNXRUNTIME="" TAG="sluice:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
while [ $# -gt 0 ]; do
    case $1 in
        --binary) BINARY=$2; shift 2 ;;
        --onnxruntime) ONNXRUNTIME=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--onnxruntime PATH] [--tag NAME:TAG]" >&2; exit 2 ;;
    esac
done
command -v docker >/dev/null || { echo "needs docker" >&2; exit 1; }
if [ -z "$BINARY" ]; then
    cargo build --release -p sluice >&2
    BINARY="${CARGO_TARGET_DIR:-target}/release/sluice"
fi

if [ -z "${BASE:-}" ]; then
    BASE=sluice-base:bookworm
    if ! docker image inspect "$BASE" >/dev/null 2>&1; then
        CACHE=${IMAGE_CACHE:-$HOME/.cache/sluice-ci}
        ROOTFS_TAR="$CACHE/debian-bookworm-minbase.tar"
        if [ ! -s "$ROOTFS_TAR" ]; then
            command -v debootstrap >/dev/null \
                || { echo "needs debootstrap (apt-get install debootstrap), or BASE=debian:bookworm-slim" >&2; exit 1; }
            [ "$(id -u)" -eq 0 ] || { echo "debootstrap needs root (or set BASE)" >&2; exit 1; }
            mkdir -p "$CACHE"
            ROOTFS=$(mktemp -d)
            echo "==> a Debian bookworm base from Debian's packages (debootstrap --variant=minbase)" >&2
            debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >&2
            rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
            tar -C "$ROOTFS" --numeric-owner -cf "$ROOTFS_TAR.partial" .
            mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
            rm -rf "$ROOTFS"
        fi
        docker import "$ROOTFS_TAR" "$BASE" >/dev/null
    fi
fi

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
mkdir "$CONTEXT/lib"
strip -o "$CONTEXT/sluice" "$BINARY"
[ -z "$ONNXRUNTIME" ] || cp "$ONNXRUNTIME" "$CONTEXT/lib/libonnxruntime.so"
cp deploy/image/Dockerfile "$CONTEXT/"
docker build --quiet --build-arg "BASE=$BASE" --tag "$TAG" "$CONTEXT" >/dev/null
echo "$TAG"
