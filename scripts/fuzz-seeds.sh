#!/usr/bin/env bash
# Makes the seed corpora of fuzz/ from a real (throwaway) node namespace:
# CNI configs, specs, a saved plan, an observed snapshot, and raw netlink
# dump answers (links, addresses, routes, rules) as the kernel sends them.
# Run as root from the repository root after `cargo build`; it removes what
# it makes. The seeds are committed; run again only to refresh them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/debug/headcni
corpus=$PWD/fuzz/corpus
ns=hcfuzzseed$$
pod=${ns}p
work=$(mktemp -d)
cleanup() { ip netns del "$pod" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$corpus"/{cni_config,spec,saved_plan,snapshot,netlink_answer}

ip netns add "$ns"; ip netns add "$pod"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev tailscale0 mode tun
ip -n "$ns" addr add 100.64.0.1/32 dev tailscale0
ip -n "$ns" link set tailscale0 up
ip -n "$ns" link add eth0 type veth peer name up0
ip -n "$ns" addr add 203.0.113.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" route add default via 203.0.113.1
ip -n "$ns" rule add from 10.244.0.0/24 to 100.64.0.0/10 lookup 1042 priority 5200 protocol 104
cat > "$work/spec.toml" <<TOML
version = 1
mode = "host"
state_dir = "$work/state"

[pod_network]
cidr = "10.244.0.0/24"
masquerade = "internet"

[tailnet]
interface = "tailscale0"

[[route]]
destination = "198.51.100.0/24"
via = "203.0.113.1"
TOML
export HEADCNI_SPEC=$work/spec.toml
ip netns exec "$ns" "$bin" pod add --id seedpod --netns "/run/netns/$pod" >/dev/null
ip netns exec "$ns" "$bin" plan --out "$corpus/saved_plan/seed-plan.json" >/dev/null 2>&1
ip netns exec "$ns" "$bin" apply >/dev/null
ip netns exec "$ns" "$bin" observe --out "$corpus/snapshot/seed-observed.json" 2>/dev/null
ip netns exec "$ns" "$bin" plan --out "$corpus/saved_plan/seed-empty-plan.json" >/dev/null 2>&1

cp "$work/spec.toml" "$corpus/spec/seed-host.toml"
cp examples/headcni.toml "$corpus/spec/seed-example.toml"
i=0; for f in tests/golden/*/spec.toml; do cp "$f" "$corpus/spec/seed-golden-$i.toml"; i=$((i+1)); done
cat > "$corpus/spec/seed-daemon.toml" <<'TOML'
version = 1
mode = "daemon"
[pod_network]
cidr = "10.244.0.0/24"
cluster_cidr = "10.244.0.0/16"
[daemon]
login_server = "https://headscale.example.test"
auth_key_file = "/etc/headcni/authkey"
metrics_listen = "127.0.0.1:9108"
TOML

cat > "$corpus/cni_config/seed-minimal.json" <<'JSON'
{"cniVersion":"1.0.0","name":"headcni","type":"headcni"}
JSON
cat > "$corpus/cni_config/seed-full.json" <<'JSON'
{"cniVersion":"1.1.0","name":"headcni","type":"headcni","spec":"/etc/headcni/headcni.toml","stateDir":"/var/lib/headcni","lockTimeoutMs":5000,"logFile":"/var/log/headcni.log","logLevel":"debug","dns":{"nameservers":["10.96.0.10"]},"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.244.0.2/32","gateway":"10.244.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}]},"cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}
JSON

# Raw dump answers, as the kernel sends them, one datagram a file.
ip netns exec "$ns" python3 - "$corpus/netlink_answer" <<'PY'
import os, socket, struct, sys
out = sys.argv[1]
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
for name, kind, body in [("link", 18, struct.pack("BxHiII", 0, 0, 0, 0, 0)),
                         ("addr", 22, struct.pack("BBBBI", 2, 0, 0, 0, 0)),
                         ("route", 26, struct.pack("BBBBBBBBI", 2, 0, 0, 0, 0, 0, 0, 0, 0)),
                         ("rule", 34, struct.pack("BBBBBBBBI", 2, 0, 0, 0, 0, 0, 0, 0, 0))]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    msg = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
    s.send(msg)
    n = 0
    while True:
        data = s.recv(65536)
        with open(os.path.join(out, f"seed-{name}-{n}"), "wb") as f:
            f.write(data)
        n += 1
        types, at = [], 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("IH", data, at)
            types.append(kind)
            at += max(16, (length + 3) & ~3)
        if 3 in types or 2 in types or n > 8:  # NLMSG_DONE, NLMSG_ERROR
            break
PY
ls "$corpus"/* | head -50
