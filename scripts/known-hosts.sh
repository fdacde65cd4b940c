#!/usr/bin/env bash
# known-hosts.sh HOSTS_JSON: print an OpenSSH known_hosts file for the local
# stack in HOSTS_JSON (the inventory `tofu output` wrote): every host's
# ansible_host with the ed25519 host key the instance generated at first boot,
# read through LXD (a channel that needs no trust in the network), so SSH can
# check host keys strictly from the first connection. Waits up to 180 s per
# instance for its first boot to write the key.
. "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] && [ -f "$1" ] || die "usage: known-hosts.sh HOSTS_JSON"

python3 - "$1" <<'PY' | while read -r name address; do
import json, sys
inventory = json.load(open(sys.argv[1]))
for group in inventory["all"]["children"].values():
    for name, host in (group.get("hosts") or {}).items():
        print(name, host["ansible_host"])
PY
  key=""
  for _ in $(seq 1 180); do
    key=$(lxc file pull "$name/etc/ssh/ssh_host_ed25519_key.pub" - 2>/dev/null) && [ -n "$key" ] && break
    sleep 1
  done
  [ -n "$key" ] || die "$name: no SSH host key after 180 s (did the instance boot?)"
  set -- $key
  echo "$address $1 $2"
done
