#!/usr/bin/env bash
# Build a real Debian bookworm base image as an OCI image layout, for the benchmark.
#
#   bench/build_image.sh            # builds once, then reuses bench/.cache/
#   FORCE=1 bench/build_image.sh    # rebuild
#
# Result: bench/.cache/oci-debian  (OCI image layout) with two tags:
#   bookworm     debootstrap --variant=minbase bookworm, one gzip layer + config
#   bookworm-v2  bookworm + one more gzip layer: `apt-get install curl` done in a chroot
#
# The Debian mirror is the one this machine's apt is configured with
# (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); nothing is hardcoded.
# Needs root (debootstrap, chroot). Non-bench requirements: debootstrap, umoci.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${BENCH_CACHE:-$HERE/.cache}"
LAYOUT="$CACHE/oci-debian"
STAMP="$CACHE/oci-debian.done"
SUITE=bookworm

if [[ -f "$STAMP" && -d "$LAYOUT" && "${FORCE:-0}" != 1 ]]; then
    echo "build_image: cached image at $LAYOUT ($(cat "$STAMP"))"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "build_image: must run as root (debootstrap/chroot)" >&2
    exit 1
fi

# --- tools ------------------------------------------------------------------
missing=()
for pkg in debootstrap umoci; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "build_image: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# --- mirror from the host's apt configuration -------------------------------
find_mirror() {
    local f uri
    # deb822 .sources files: first stanza that is Types: deb, has the suite, and is not -security
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS=""; FS="\n" }
            {
                types=""; uris=""; suites=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^[ \t]*#/) continue
                    if ($i ~ /^Types:/)  { types=$i }
                    if ($i ~ /^URIs:/)   { uris=$i }
                    if ($i ~ /^Suites:/) { suites=$i }
                }
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ (" " suite " ") && uris !~ /security/) {
                    sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f")
        if [[ -n "$uri" ]]; then echo "$uri"; return; fi
    done
    # one-line format
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) == suite && $i !~ /security/) { print $i; exit }
            }' "$f")
        if [[ -n "$uri" ]]; then echo "$uri"; return; fi
    done
}
MIRROR="${BENCH_MIRROR:-$(find_mirror)}"
if [[ -z "$MIRROR" ]]; then
    echo "build_image: could not find a '$SUITE' deb mirror in /etc/apt/sources.list{,.d/*}; set BENCH_MIRROR" >&2
    exit 1
fi
echo "build_image: mirror $MIRROR"

# --- build ------------------------------------------------------------------
mkdir -p "$CACHE"
WORK="$CACHE/work"
TMPL="$CACHE/oci-debian.tmp"
rm -rf "$WORK" "$TMPL"
mkdir -p "$WORK"

MOUNTS=()
cleanup() {
    local m
    for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

strip_rootfs() {  # drop caches that no real base image ships
    local r="$1"
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin \
           "$r"/var/lib/apt/lists/* "$r"/var/log/*.log "$r"/var/log/apt/* \
           "$r"/tmp/* "$r"/var/tmp/* "$r"/debootstrap
    mkdir -p "$r"/var/lib/apt/lists/partial
}

t0=$(date +%s)
umoci init --layout "$TMPL"
umoci new --image "$TMPL:$SUITE"
umoci unpack --image "$TMPL:$SUITE" "$WORK/b1"

echo "build_image: debootstrap --variant=minbase $SUITE (this takes a few minutes)"
debootstrap --variant=minbase "$SUITE" "$WORK/b1/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    echo "build_image: debootstrap failed; last lines of $WORK/debootstrap.log:" >&2
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}
t1=$(date +%s)
strip_rootfs "$WORK/b1/rootfs"
# resolv.conf inside a base image is normally empty; the runtime fills it in
: > "$WORK/b1/rootfs/etc/resolv.conf"

umoci repack --history.created_by "debootstrap --variant=minbase $SUITE" --image "$TMPL:$SUITE" "$WORK/b1"
umoci config --image "$TMPL:$SUITE" --os linux --architecture amd64 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd /bin/bash --no-history
t2=$(date +%s)

# --- v2: one more layer from a real package install -------------------------
umoci unpack --image "$TMPL:$SUITE" "$WORK/b2"
R2="$WORK/b2/rootfs"
cp /etc/resolv.conf "$R2/etc/resolv.conf"
mount -t proc proc "$R2/proc" && MOUNTS+=("$R2/proc") || echo "build_image: (no /proc in chroot, continuing)"
echo "build_image: v2 = chroot apt-get install curl"
{
    chroot "$R2" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        apt-get update
    chroot "$R2" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends curl ca-certificates
} >"$WORK/v2-apt.log" 2>&1 || {
    echo "build_image: apt-get in chroot failed; see $WORK/v2-apt.log" >&2
    tail -n 30 "$WORK/v2-apt.log" >&2
    exit 1
}
cleanup; MOUNTS=()
chroot "$R2" apt-get clean
strip_rootfs "$R2"
: > "$R2/etc/resolv.conf"
umoci repack --history.created_by "apt-get install -y --no-install-recommends curl ca-certificates" \
    --image "$TMPL:$SUITE-v2" "$WORK/b2"
umoci gc --layout "$TMPL"
t3=$(date +%s)

rm -rf "$LAYOUT"
mv "$TMPL" "$LAYOUT"
rm -rf "$WORK"
echo "built $(date -u +%FT%TZ) debootstrap=$((t1-t0))s v1_total=$((t2-t0))s v2=$((t3-t2))s total=$((t3-t0))s mirror=$MIRROR" > "$STAMP"
echo "build_image: done: $(cat "$STAMP")"
umoci ls --layout "$LAYOUT"
