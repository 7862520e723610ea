#!/usr/bin/env bash
# Install the connreg wheel and its dependencies (binary wheels from PyPI, or from
# PIP_FIND_LINKS / a local index) into DEST_DIR/usr/local, laid out for the image's interpreter:
# Debian's python3.11 puts /usr/local/lib/python3.11/dist-packages on sys.path by itself.
#
#   image/install-app.sh WHEEL DEST_DIR [ARCH]      # ARCH: amd64 (default), arm64
#
# pip runs on the builder, not in the image (the image has no pip), and picks wheels for the
# image's platform (CPython 3.11, glibc 2.36 = bookworm, ARCH), so an arm64 tree is made on an
# amd64 machine without an emulator. Used by image/build.sh and by the Dockerfile's `app` stage.
# PYTHON: the builder's interpreter with pip (default python3); any version works.
set -euo pipefail

WHEEL="${1:?usage: image/install-app.sh WHEEL DEST_DIR [ARCH]}"
DEST="${2:?usage: image/install-app.sh WHEEL DEST_DIR [ARCH]}"
ARCH="${3:-amd64}"
PYTHON="${PYTHON:-python3}"

case "$ARCH" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "install-app.sh: no wheel platform known for $ARCH" >&2; exit 1 ;;
esac

SITE="$DEST/usr/local/lib/python3.11/dist-packages"
[[ "$(realpath -m "$DEST")" != / ]] || { echo "install-app.sh: refusing to replace /" >&2; exit 1; }
rm -rf "$DEST"
# var/lib/connreg: the data directory, created empty; the Dockerfile gives it to uid 10001.
mkdir -p "$SITE" "$DEST/usr/local/bin" "$DEST/var/lib/connreg"
chmod 0700 "$DEST/var/lib/connreg"   # what the node makes it at its first start anyway
# Wheels for glibc up to 2.36 (bookworm's) run in the image; pip wants each tag named. linux_*:
# a wheel maturin built without a manylinux audit.
platforms=("linux_$machine" "manylinux2014_$machine")
for minor in $(seq 17 36); do platforms+=("manylinux_2_${minor}_$machine"); done
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-compile \
    --target "$SITE" --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
    "${platforms[@]/#/--platform=}" \
    "$WHEEL"
# Some wheels ship their extensions with debug information (zstandard's: 12 MB each, 1 MB
# without); a server never reads it. STRIP: a strip that knows ARCH's ELF (binutils-multiarch,
# or binutils-aarch64-linux-gnu's aarch64-linux-gnu-strip); without one the files stay as they are.
STRIP="${STRIP:-strip}"
find "$SITE" -name '*.so' -type f -print0 | while IFS= read -r -d '' so; do
    "$STRIP" --strip-unneeded "$so" 2>/dev/null || { echo "install-app.sh: $STRIP cannot strip $so, kept" >&2; break; }
done
# pip writes console scripts with the builder's interpreter in the #! line; the image's is
# /usr/bin/python3.
rm -rf "$SITE/bin"
cat > "$DEST/usr/local/bin/connreg" <<'EOF'
#!/usr/bin/python3
import sys
from connreg.cli.main import main
sys.exit(main())
EOF
chmod 0755 "$DEST/usr/local/bin/connreg"
# Byte-compiled here because the image's user cannot write __pycache__ under /usr/local;
# unchecked-hash as in rootfs.sh (the bytecode is trusted, not checked against mtimes).
# The bytecode is the same on every architecture; it needs a 3.11 to write it.
if python3.11 -c '' 2>/dev/null; then
    python3.11 -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$DEST" -p / "$SITE" >/dev/null
else
    echo "install-app.sh: no python3.11 here, the image will compile its modules at each start" >&2
fi
echo "install-app.sh: $ARCH packages in $SITE ($(du -sh "$SITE" | cut -f1))"
