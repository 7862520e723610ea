#!/usr/bin/env bash
# Build connreg's container image without pulling anything from a container registry
# (`make image`): only Debian packages and PyPI wheels are downloaded.
#
#   image/build.sh                      # -> connreg:latest in podman's storage
#
#   1. the wheel:        maturin build --release          -> build/image/wheels-<arch>/
#   2. the base:         image/rootfs.sh | podman import  -> localhost/connreg-base:<arch>-<key>
#                        (kept: rebuilt when rootfs.sh changes, or with REFRESH_BASE=1 to take
#                        Debian's latest updates)
#   3. the application:  image/install-app.sh              -> build/image/app-<arch>/
#   4. the image:        podman build of the Dockerfile with BASE=<the base>, APP=app-from-context
#
# Environment:
#   TAG       image name (connreg:latest)        ARCH    amd64 (default) or arm64
#   PODMAN    podman command and global flags, e.g. "podman --storage-driver vfs"
#   PYTHON    interpreter with maturin and pip (python3)
#   WHEEL     a wheel to use instead of building one
#   STRIP     strip for ARCH's binaries (arm64: aarch64-linux-gnu-strip)
#   CARGO_TARGET_DIR, REFRESH_BASE=1
# Needs root only for podman (rootful here); rootfs.sh needs apt-get and dpkg-deb.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="${TAG:-connreg:latest}"
ARCH="${ARCH:-amd64}"
PYTHON="${PYTHON:-python3}"
BUILD_DIR=build/image   # inside the build context: the Dockerfile copies app-$ARCH from here
read -r -a PODMAN <<< "${PODMAN:-podman}"
export PYTHON

say() { echo "image/build.sh: $*"; }
t0=$(date +%s)

[[ "$ARCH" != arm64 ]] || export STRIP="${STRIP:-aarch64-linux-gnu-strip}"  # binutils-aarch64-linux-gnu

# --- 1. wheel -------------------------------------------------------------------------------
if [[ -n "${WHEEL:-}" ]]; then
    wheel="$WHEEL"
else
    rm -rf "$BUILD_DIR/wheels-$ARCH"; mkdir -p "$BUILD_DIR"
    target=()
    case "$ARCH" in
        amd64) ;;
        # Cross-compiled: needs `rustup target add aarch64-unknown-linux-gnu` and Debian's
        # gcc-aarch64-linux-gnu as the linker (abi3: no arm64 Python is needed to build).
        arm64) target=(--target aarch64-unknown-linux-gnu)
               export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}" ;;
        *) echo "image/build.sh: ARCH $ARCH: only amd64 and arm64 are known" >&2; exit 1 ;;
    esac
    "$PYTHON" -m maturin build --release "${target[@]}" --out "$BUILD_DIR/wheels-$ARCH" >"$BUILD_DIR/maturin.log" 2>&1 \
        || { tail -n 30 "$BUILD_DIR/maturin.log" >&2; exit 1; }
    wheel="$(ls "$BUILD_DIR"/wheels-$ARCH/connreg-*.whl)"
fi
say "wheel $(basename "$wheel")"
t1=$(date +%s)

# --- 2. base --------------------------------------------------------------------------------
key="$(cat image/rootfs.sh | sha256sum | cut -c1-12)"
base="localhost/connreg-base:bookworm-$ARCH-$key"
if [[ "${REFRESH_BASE:-0}" == 1 ]] || ! "${PODMAN[@]}" image exists "$base"; then
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    image/rootfs.sh "$rootfs/tree" "$ARCH"
    tar -C "$rootfs/tree" --numeric-owner --sort=name -c . \
        | "${PODMAN[@]}" import --arch "$ARCH" --os linux \
            --message "image/rootfs.sh $ARCH (Debian bookworm packages)" - "$base" >/dev/null
    rm -rf "$rootfs"
    say "base $base imported"
else
    say "base $base (kept from an earlier build)"
fi
t2=$(date +%s)

# --- 3. application tree --------------------------------------------------------------------
image/install-app.sh "$wheel" "$BUILD_DIR/app-$ARCH" "$ARCH"
t3=$(date +%s)

# --- 4. the image, from the Dockerfile --------------------------------------------------------
version="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- rust python pyproject.toml Cargo.toml Cargo.lock image Dockerfile 2>/dev/null \
    || revision="$revision-dirty"
source_url="$(git config --get remote.origin.url 2>/dev/null || echo unknown)"
# --layers=false: one commit per stage, not one per instruction (with vfs each commit is a
# full copy of the tree: 4 times faster). --format docker: the OCI image config has no HEALTHCHECK. --pull never: nothing is fetched;
# the stages that would (debian, rust) are not needed with these two build arguments.
"${PODMAN[@]}" build --quiet --layers=false --format docker --pull=never --platform "linux/$ARCH" \
    --build-arg BASE="$base" --build-arg APP=app-from-context --build-arg APP_TREE="$BUILD_DIR/app-$ARCH" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source_url" \
    -f Dockerfile -t "$TAG" . >/dev/null
t4=$(date +%s)
say "$TAG built in $((t4 - t0)) s (wheel $((t1 - t0)) s, base $((t2 - t1)) s, packages $((t3 - t2)) s, image $((t4 - t3)) s)"
