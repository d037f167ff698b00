#!/usr/bin/env bash
# Installs what headcni's tests, quickstart and benchmarks need on a fresh
# Debian machine (run as root). Safe to run again: it installs only what is missing.
set -euo pipefail
packages=(iproute2 iputils-ping containernetworking-plugins procps nftables util-linux python3 wireguard-go wireguard-tools conntrack
    # install tests: TLS for the stand-in API server, the manifests' validator
    openssl python3-venv
    # release tests: the static musl build and its image
    musl-tools binutils podman)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# `ip route` prints headcni's routes as `proto headcni` (apply also writes this).
install -D -m 0644 "$(dirname "$0")/../deploy/rt_protos.d/headcni.conf" /etc/iproute2/rt_protos.d/headcni.conf
command -v cargo >/dev/null || { echo "cargo is needed (rustup.rs)" >&2; exit 1; }
# The fuzz smoke test (tests/fuzz_smoke.rs) runs libFuzzer through cargo-fuzz,
# which needs a nightly toolchain.
if ! rustup run nightly cargo fuzz --version >/dev/null 2>&1; then
    rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fi
# The manifests' offline schema check (tests/deploy.rs): kubernetes-validate
# from PyPI, in a venv of its own.
venv=/opt/headcni-ci/venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
fi
# The static release binary (tests/release.rs).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
