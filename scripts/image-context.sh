#!/usr/bin/env bash
# Lays out the build context of the headcni image (Containerfile): the static
# headcni binary and the programs it runs at run time (nft, conntrack) with
# the shared libraries they load. No base image: nothing is pulled.
#   bash scripts/image-context.sh BINARY CONTEXT_DIR
set -euo pipefail
binary=${1:?static headcni binary}
ctx=${2:?context directory}
root="$ctx/rootfs"
rm -rf "$root"
mkdir -p "$root/usr/sbin" "$root/etc/iproute2/rt_protos.d" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/headcni"
for prog in nft conntrack; do
    path=$(command -v "$prog")
    install -D -m 0755 "$(readlink -f "$path")" "$root/usr/sbin/$prog"
    # Each library at the path the dynamic loader looks for it.
    ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
        [ -n "$lib" ] || continue
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
done
printf '104\theadcni\n' > "$root/etc/iproute2/rt_protos.d/headcni.conf"
cp "$(dirname "$0")/../Containerfile" "$ctx/Containerfile"
