#!/usr/bin/env bash
# make image: the base debian:bookworm-slim made here from Debian packages (debootstrap), then the repository's
# Dockerfile built on it with buildah, so the Dockerfile a Docker user builds is the one tested.
# Usage: deploy/build_image.sh [image name] [context dir]
set -euo pipefail
IMAGE=${1:-hotdog:latest}
CONTEXT=${2:-.}
BASE=debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "make image: $tool is missing: install the Debian package $tool (apt-get install $tool)" >&2; exit 2; }
done

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "image: making $BASE with debootstrap from $MIRROR"
    ctr=$(buildah from scratch)
    trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
    root=$(buildah mount "$ctr")
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
    # What the official slim image leaves out: package lists and caches.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    buildah umount "$ctr" >/dev/null
    buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
    trap - EXIT
fi

# pip inside the build trusts this machine's CA bundle when there is one (mounted beside the image's own, never
# over it), and reads wheels already on this machine's disk (pip's find-links and file:// indexes) to save downloads.
pip_config() { python3 -m pip config list 2>/dev/null | sed -n "s/^global\.$1='\(.*\)'\$/\1/p"; }
args=()
ca=$(pip_config cert)
if [ -n "$ca" ] && [ -f "$ca" ]; then
    args+=(--volume "$ca:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
fi
for key in extra-index-url find-links; do
    value=$(pip_config "$key")
    [ -n "$value" ] || continue
    for url in $value; do
        dir=${url#file://}
        [ -d "$dir" ] || continue
        [ "$(basename "$dir")" != simple ] || dir=$(dirname "$dir")  # a simple index links to ../../files
        args+=(--volume "$dir:$dir:ro")
    done
    var=PIP_$(echo "$key" | tr a-z- A-Z_)
    args+=(--build-arg "$var=$value")
done

start=$(date +%s)
buildah bud --isolation chroot --pull-never --layers --force-rm --format docker "${args[@]}" -t "$IMAGE" "$CONTEXT"
echo "image: $IMAGE built in $(( $(date +%s) - start )) s, $(buildah images --format '{{.Size}}' "$IMAGE")"
