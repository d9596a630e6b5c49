#!/usr/bin/env bash
# `make image` / `make test-image` (tests/test_image.py) build and run the container image with buildah on a base
# made by debootstrap: Debian's packages; skipped when present.
set -euo pipefail
PACKAGES=(buildah debootstrap)

missing=()
for pkg in "${PACKAGES[@]}"; do
    command -v "$pkg" >/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "image-deps: ${PACKAGES[*]} already installed"; exit 0
fi
command -v apt-get >/dev/null || { echo "image-deps: install ${missing[*]} (no apt-get here)" >&2; exit 1; }
source "$(dirname "$0")/../lib/apt-install.sh"
apt_install image-deps "${missing[@]}"
buildah --version
