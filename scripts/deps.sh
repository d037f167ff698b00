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
    # Without nightly the smoke test fuzzes on stable (RUSTC_BOOTSTRAP=1, no sanitizer).
    rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal ||
        echo "deps.sh: no nightly toolchain; fuzzing on stable" >&2
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
# Without the musl target it is a static gnu build (+crt-static).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl ||
    echo "deps.sh: no musl target; the release test builds a static gnu binary" >&2
# The real tailnet (tests/realnet): tailscaled, the tailscale CLI and
# Headscale, built from the Go module proxy at pinned versions, outside the
# repository. Two separate builds: one tools module would let minimal
# version selection move tailscale to Headscale's own requirement.
# HEADCNI_TAILNET_DIR says where; each version has its own folder, so a
# build is skipped when its binaries are there.
. "$(dirname "$0")/tailnet-versions"
tailnet_dir=${HEADCNI_TAILNET_DIR:-/opt/headcni-ci/tailnet}
command -v go >/dev/null || { echo "go is needed for tailscaled and Headscale (Go 1.26)" >&2; exit 1; }
ts_bin=$tailnet_dir/tailscale-$tailscale_version
if [ ! -x "$ts_bin/tailscaled" ] || [ ! -x "$ts_bin/tailscale" ]; then
    stamp=${tailscale_version#v}
    CGO_ENABLED=0 GOBIN=$ts_bin GOFLAGS=-buildvcs=false go install \
        -ldflags "-X tailscale.com/version.shortStamp=$stamp -X tailscale.com/version.longStamp=$stamp-headcni" \
        "tailscale.com/cmd/tailscaled@$tailscale_version" "tailscale.com/cmd/tailscale@$tailscale_version"
fi
hs_bin=$tailnet_dir/headscale-$headscale_version
if [ ! -x "$hs_bin/headscale" ]; then
    # `go install headscale@VERSION` also asks the proxy for the module's
    # version list (to warn of a deprecation), which the proxy refuses for
    # this module; building from the downloaded module needs only the
    # version itself, checked against go.sum's database like any download.
    hs_src=$(go mod download -json "github.com/juanfont/headscale@$headscale_version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    (cd "$hs_src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -o "$hs_bin/headscale" ./cmd/headscale)
fi
# helm, for the chart's lint and render check (tests/deploy.rs); Debian has
# no helm package. Pinned like the rest, skipped when built.
helm_version=v4.3.2
helm_bin=/opt/headcni-ci/helm-$helm_version
if [ ! -x "$helm_bin/helm" ]; then
    CGO_ENABLED=0 GOBIN=$helm_bin GOFLAGS=-buildvcs=false go install "helm.sh/helm/v4/cmd/helm@$helm_version"
fi
