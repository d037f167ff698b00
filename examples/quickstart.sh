#!/usr/bin/env bash
# headcni's main job on an example, inside throwaway network namespaces:
# a "node" with a stand-in tailscale0 (to a tailnet peer 100.64.0.5 and
# fd7a:115c:a1e0::5) and a default gateway (203.0.113.1), three dual-stack
# pods added with `headcni pod add`, then plan, apply, connectivity checks
# over both families, and a clean second plan.
# Nothing outside the namespaces and a temp dir is touched; all is removed on exit.
set -euo pipefail

HEADCNI=${HEADCNI:-$(dirname "$0")/../target/release/headcni}
[ -x "$HEADCNI" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces need it)" >&2; exit 1; }

tag="hcq$$"
node="$tag-node" peer="$tag-peer" gw="$tag-gw"
pods=("$tag-pod1" "$tag-pod2" "$tag-pod3")
work=$(mktemp -d)
cleanup() {
    for ns in "$node" "$peer" "$gw" "${pods[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Bold only for a person at a terminal (no escape codes in a pipe or a log).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    step() { printf '\n== %s\n' "$*"; }
fi
in_node() { ip netns exec "$node" "$@"; }

step "building throwaway namespaces ($node, $peer, $gw, ${pods[*]})"
for ns in "$node" "$peer" "$gw" "${pods[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
# Stand-in tailnet: node's tailscale0 <-> peer holding 100.64.0.5.
ip -n "$node" link add tailscale0 type veth peer name ts-peer netns "$peer"
ip -n "$node" addr add 100.64.0.1/32 dev tailscale0
ip -n "$node" link set tailscale0 up
ip -n "$peer" addr add 100.64.0.5/32 dev ts-peer
ip -n "$peer" link set ts-peer up
ip -n "$peer" route add 100.64.0.1/32 dev ts-peer
ip -n "$peer" route add 10.244.0.0/24 via 100.64.0.1 dev ts-peer
ip -n "$node" addr add fd7a:115c:a1e0::1/128 dev tailscale0 nodad
ip -n "$peer" addr add fd7a:115c:a1e0::5/128 dev ts-peer nodad
ip -n "$peer" route add fd7a:115c:a1e0::1/128 dev ts-peer
ip -n "$peer" route add fd00:10:244::/64 via fd7a:115c:a1e0::1 dev ts-peer
# Stand-in default gateway 203.0.113.1.
ip -n "$node" link add eth0 type veth peer name up0 netns "$gw"
ip -n "$node" addr add 203.0.113.2/24 dev eth0
ip -n "$node" link set eth0 up
ip -n "$node" route add default via 203.0.113.1
ip -n "$gw" addr add 203.0.113.1/24 dev up0
ip -n "$gw" link set up0 up
ip -n "$gw" route add 10.244.0.0/24 via 203.0.113.2

# The example spec, dual-stack (its cidr6 line uncommented).
sed -e "s|/var/lib/headcni|$work/state|" -e 's|^# cidr6 |cidr6 |' "$(dirname "$0")/headcni.toml" > "$work/headcni.toml"
# The host's tailscale CLI, standing in like tailscale0 does: logged in,
# advertising the pod CIDRs (approved), accepting routes, not masquerading.
cat > "$work/tailscale" <<'SH'
#!/bin/sh
case "$1" in
  debug) echo '{"RouteAll": true, "AdvertiseRoutes": ["10.244.0.0/24", "fd00:10:244::/64"], "NoSNAT": true}';;
  status) echo '{"BackendState": "Running", "Self": {"HostName": "quickstart", "PrimaryRoutes": ["10.244.0.0/24", "fd00:10:244::/64"]}}';;
esac
SH
chmod 755 "$work/tailscale"
printf '\n[daemon]\ntailscale = "%s"\n' "$work/tailscale" >> "$work/headcni.toml"
export HEADCNI_SPEC="$work/headcni.toml"

step "headcni validate"
in_node "$HEADCNI" validate

step "three pods: headcni pod add"
for ns in "${pods[@]}"; do in_node "$HEADCNI" pod add --id "$ns" --netns "/run/netns/$ns"; done
in_node "$HEADCNI" pod list

step "headcni plan --detailed-exitcode (exit 2: changes present)"
set +e; in_node "$HEADCNI" plan --detailed-exitcode; rc=$?; set -e
[ "$rc" = 2 ] || { echo "expected exit 2, got $rc" >&2; exit 1; }

step "headcni apply"
in_node "$HEADCNI" apply

step "routes on the node"
in_node ip route show
in_node ip -6 route show proto headcni
step "routes in ${pods[0]}"
ip -n "${pods[0]}" route show
ip -n "${pods[0]}" -6 route show proto headcni

step "connectivity from ${pods[0]}"
read -r ip1 ip1v6 < <(in_node "$HEADCNI" pod list --format json | python3 -c 'import json,sys; p = json.load(sys.stdin)[1]; print(p["ip"], p["ip6"])')
for target in 10.244.0.1 "$ip1" 100.64.0.5 203.0.113.1 fe80::1%eth0 "$ip1v6" fd7a:115c:a1e0::5; do
    ip netns exec "${pods[0]}" ping -c1 -W2 "$target" >/dev/null && echo "ping $target: ok" || { echo "ping $target: FAILED" >&2; exit 1; }
done

step "second plan: nothing to do (exit 0)"
in_node "$HEADCNI" plan --detailed-exitcode

step "headcni install (into the temp dir) and headcni doctor: no warning"
in_node "$HEADCNI" install --cni-bin-dir "$work/bin" --cni-conf-dir "$work/net.d" \
    --protocols-dir "$work/protos" --record "$work/install.json" >/dev/null
in_node "$HEADCNI" doctor --cni-conf-dir "$work/net.d" --cni-bin-dir "$work/bin" | tee "$work/doctor.txt"
! grep -qE '^(WARN|FAIL)' "$work/doctor.txt" || { echo "doctor found problems" >&2; exit 1; }

step "done; cleaning up"
