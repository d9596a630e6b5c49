#!/usr/bin/env bash
# tests/test_web.py drives a real headless Chromium through chromedriver, and tests/test_security.py
# makes a TLS certificate with the openssl command. Browsers cannot be downloaded by the test tools
# here, so Debian's packages are installed; skipped when present.
set -euo pipefail
PACKAGES=(chromium chromium-driver fonts-noto-color-emoji openssl)

if ! command -v apt-get >/dev/null; then
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v openssl >/dev/null; then
        echo "web-deps: chromium, chromedriver and openssl found"; exit 0
    fi
    echo "web-deps: install chromium, chromedriver and openssl (no apt-get here)" >&2; exit 1
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "web-deps: ${PACKAGES[*]} already installed"; exit 0
fi
source "$(dirname "$0")/../lib/apt-install.sh"
apt_install web-deps "${missing[@]}"
chromium --version
