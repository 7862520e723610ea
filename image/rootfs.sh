#!/usr/bin/env bash
# The image's base root filesystem, made from Debian bookworm packages, distroless-style: the
# Python 3.11 interpreter, its standard library and the shared libraries they link, CA
# certificates, and nothing else (no shell, no package manager). Packages are unpacked, not
# installed: no maintainer script runs, so this needs neither root nor chroot nor an emulator,
# and the same script builds any architecture on any Debian-like machine with apt.
#
#   image/rootfs.sh DEST_DIR [ARCH]         # ARCH: amd64 (default), arm64, ...
#
# Used by image/build.sh (`make image`, offline here) and by the Dockerfile's `rootfs` stage,
# so the two cannot drift. apt's sources are the builder's own (/etc/apt/sources.list{,.d});
# the packages' versions are recorded in DEST_DIR/var/lib/dpkg/status.d/ (as distroless does),
# which image scanners read. Needs: apt-get, dpkg-deb, tar, python3.11 (to precompile the
# standard library; the bytecode does not depend on the architecture).
set -euo pipefail

DEST="${1:?usage: image/rootfs.sh DEST_DIR [ARCH]}"
ARCH="${2:-amd64}"
UID_CONNREG=10001

# What the interpreter and the wheels need; apt adds their dependencies.
ROOTS=(python3.11-minimal libpython3.11-stdlib media-types libgcc-s1)
# Pulled in by the dependency closure only for dpkg itself (readline-common wants dpkg or
# install-info); nothing at run time uses them.
NOT_NEEDED=(dpkg tar libacl1 libselinux1 libpcre2-8-0 libmd0 libzstd1 readline-common)
# Taken for their files only, without their dependencies (openssl, debconf, perl ...):
# CA certificates (the bundle is assembled below, as update-ca-certificates would), /etc/os-release,
# /etc/services and /etc/protocols.
FILES_ONLY=(ca-certificates base-files netbase)

python3.11 -c 'import concurrent.futures' 2>/dev/null \
    || { echo "rootfs.sh: python3.11 (Debian: python3, not only python3-minimal) is needed to precompile the standard library" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- a private apt for the target architecture (the builder's own apt state is not touched) --
mkdir -p "$WORK/state/lists/partial" "$WORK/cache/archives/partial" "$WORK/files"
: > "$WORK/status"   # empty: apt resolves the full closure, libc6 included
cat > "$WORK/apt.conf" <<EOF
Dir::State "$WORK/state";
Dir::State::status "$WORK/status";
Dir::Cache "$WORK/cache";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
APT::Install-Recommends "false";
APT::Sandbox::User "root";
EOF
export APT_CONFIG="$WORK/apt.conf"
apt-get -qq update
apt-get -qq install --download-only -y "${ROOTS[@]}" >/dev/null
( cd "$WORK/files" && apt-get -qq download "${FILES_ONLY[@]/%/:$ARCH}" 2>/dev/null \
    || apt-get -qq download "${FILES_ONLY[@]}" )

debs=()
for deb in "$WORK"/cache/archives/*.deb; do
    name="$(dpkg-deb -f "$deb" Package)"
    skip=0
    for n in "${NOT_NEEDED[@]}"; do [[ "$name" == "$n" ]] && skip=1; done
    ((skip)) || debs+=("$deb")
done
debs+=("$WORK"/files/*.deb)

# --- unpack ------------------------------------------------------------------------------
[[ "$(realpath -m "$DEST")" != / ]] || { echo "rootfs.sh: refusing to replace /" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"/usr/{bin,sbin,lib} "$DEST/var/lib/dpkg/status.d"
# merged /usr, as every bookworm system: packages still ship /lib/... and /bin/...
for d in bin sbin lib; do ln -s "usr/$d" "$DEST/$d"; done
case "$ARCH" in amd64) mkdir -p "$DEST/usr/lib64"; ln -s usr/lib64 "$DEST/lib64" ;; esac

for deb in "${debs[@]}"; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$DEST" --keep-directory-symlink --no-same-owner
    name="$(dpkg-deb -f "$deb" Package)"
    dpkg-deb -f "$deb" Package Version Architecture Source Installed-Size > "$DEST/var/lib/dpkg/status.d/$name"
    echo "Status: install ok installed" >> "$DEST/var/lib/dpkg/status.d/$name"
done
ln -sf python3.11 "$DEST/usr/bin/python3"

# --- what maintainer scripts and other packages would have provided ---------------------
# CA bundle, at the paths OpenSSL (OPENSSLDIR=/usr/lib/ssl, normally from the openssl package)
# and Python's ssl.create_default_context() look for it.
mkdir -p "$DEST/etc/ssl/certs" "$DEST/usr/lib/ssl"
find "$DEST/usr/share/ca-certificates/mozilla" -name '*.crt' | LC_ALL=C sort | xargs cat \
    > "$DEST/etc/ssl/certs/ca-certificates.crt"
rm -rf "$DEST/usr/share/ca-certificates" "$DEST/usr/sbin/update-ca-certificates" "$DEST/etc/ca-certificates"
ln -s /etc/ssl/certs "$DEST/usr/lib/ssl/certs"
ln -s /etc/ssl/certs/ca-certificates.crt "$DEST/usr/lib/ssl/cert.pem"

cat > "$DEST/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
connreg:x:$UID_CONNREG:$UID_CONNREG:connreg:/var/lib/connreg:/usr/sbin/nologin
EOF
cat > "$DEST/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
connreg:x:$UID_CONNREG:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$DEST/etc/nsswitch.conf"
: > "$DEST/etc/resolv.conf"   # the runtime fills it in
mkdir -p "$DEST/root" "$DEST/tmp" "$DEST/var/tmp" "$DEST/var/lib/connreg"
chmod 1777 "$DEST/tmp" "$DEST/var/tmp"
chmod 0700 "$DEST/root"

# --- trim: documentation, translations, and what a server never loads ---------------------
# Each package's licence (usr/share/doc/*/copyright, /usr/share/common-licenses) stays.
find "$DEST/usr/share/doc" -depth -mindepth 1 ! -name copyright ! -type d -delete
find "$DEST/usr/share/doc" -depth -mindepth 1 -type d -empty -delete
rm -rf "$DEST"/usr/share/{man,info,lintian,locale,bug,bash-completion} \
       "$DEST"/usr/share/python3 "$DEST"/usr/lib/*/gconv "$DEST"/var/lib/dpkg/info \
       "$DEST"/etc/{cron.*,logrotate.d,init.d,profile.d,skel,update-motd.d} \
       "$DEST"/usr/lib/python3.11/{test,idlelib,lib2to3,pydoc_data,turtledemo,ensurepip,tkinter,config-*} \
       "$DEST"/usr/bin/{pydoc3.11,pygettext3.11}

# Byte-compile the standard library now: a non-root process cannot write __pycache__ under
# /usr, so without this every start compiles each module it imports again. unchecked-hash: an
# image's files never change, so the bytecode is used without comparing it with the source's
# mtime (which the trip through tar and image layers does not always keep: 235 modules were
# "stale" with the default, i.e. compiled again at every start).
python3.11 -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$DEST" -p / "$DEST/usr/lib/python3.11" >/dev/null

# Everything owned by root, except the data directory (the volume's initial owner).
chown -R 0:0 "$DEST" 2>/dev/null || true
chown "$UID_CONNREG:$UID_CONNREG" "$DEST/var/lib/connreg" 2>/dev/null || true
echo "rootfs.sh: $ARCH root filesystem in $DEST ($(du -sh "$DEST" | cut -f1), ${#debs[@]} packages)"
