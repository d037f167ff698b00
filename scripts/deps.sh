#!/usr/bin/env bash
# Installs what headcni's tests, quickstart and benchmarks need on a fresh
# Debian machine (run as root). Safe to run again: it installs only what is missing.
set -euo pipefail
packages=(iproute2 iputils-ping containernetworking-plugins procps nftables util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is needed (rustup.rs)" >&2; exit 1; }
