#!/usr/bin/env bash
# What the container image weighs, and on what: compressed size as a registry stores it (each
# layer gzip'd, as `podman push`/`skopeo copy` send it), uncompressed size, and du of the
# image's file tree by directory.
#
#   bench/image_size.sh [TAG]        # default connreg:latest; PODMAN as for image/build.sh
set -euo pipefail

TAG="${1:-connreg:latest}"
[[ "$TAG" == */* ]] || TAG="localhost/$TAG"  # podman stores a bare name under localhost/
read -r -a PODMAN <<< "${PODMAN:-podman --storage-driver vfs}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# skopeo reads the same store podman writes: name it with the driver and paths podman uses.
store="$("${PODMAN[@]}" info --format '{{.Store.GraphDriverName}}@{{.Store.GraphRoot}}+{{.Store.RunRoot}}')"
skopeo --insecure-policy copy --quiet --dest-compress --dest-compress-format gzip \
    "containers-storage:[$store]$TAG" "oci:$out/layout:img"
manifest="$(python3 - "$out/layout" <<'EOF'
import json, sys
layout = sys.argv[1]
index = json.load(open(f"{layout}/index.json"))
print(index["manifests"][0]["digest"].split(":")[1])
EOF
)"
python3 - "$out/layout" "$manifest" <<'EOF'
import json, sys
layout, digest = sys.argv[1:]
m = json.load(open(f"{layout}/blobs/sha256/{digest}"))
total = 0
for layer in m["layers"]:
    total += layer["size"]
    print(f"layer {layer['digest'][7:19]}  {layer['size'] / 1e6:6.1f} MB gzip")
print(f"compressed total (layers + config + manifest): "
      f"{(total + m['config']['size'] + len(json.dumps(m))) / 1e6:.1f} MB")
EOF

mnt="$("${PODMAN[@]}" image mount "$TAG")"
trap '"${PODMAN[@]}" image unmount "$TAG" >/dev/null; rm -rf "$out"' EXIT
echo "uncompressed: $(du -sh --apparent-size "$mnt" | cut -f1)"
echo "--- by directory (du, MB; 0.5 MB and more)"
for dir in usr usr/lib usr/lib/python3.11 usr/local/lib/python3.11/dist-packages; do
    # one du per directory: du counts a directory once across its arguments
    du -k --max-depth=1 "$mnt/$dir" | sort -rn | awk '$1 >= 512' \
        | sed "s#$mnt/##" | awk '{printf "%6.1f %s\n", $1/1024, $2}'
done
du -k -s "$mnt/etc" "$mnt/var" | sed "s#$mnt/##" | awk '{printf "%6.1f %s\n", $1/1024, $2}'
echo "--- largest files (MB)"
find "$mnt" -type f -size +1M -printf '%s %P\n' | sort -rn | head -12 | awk '{printf "%6.1f %s\n", $1/1e6, $2}'
