#!/usr/bin/env bash
# LXD for terraform/environments/local: the daemon from Debian's packages,
# started in the background when none answers (no systemd on these hosts), a
# `dir` storage pool and lxdbr0 once, and the base image imported as an LXD
# image aliased like its Docker tag (flaskfleet/base:<version>) and
# flaskfleet-base. Idempotent; a second run only asks LXD questions.
. "$(dirname "$0")/lib.sh"
hold_lock lxd

# lxdbr0 only serves `lxc launch` by hand: every stack brings its own bridge.
# LXD cannot pick a free subnet on these machines, so it is stated.
LXD_BRIDGE_ADDRESS=${LXD_BRIDGE_ADDRESS:-10.118.0.1/24}
LXD_LOG=/var/log/flaskfleet-lxd.log

# Every system container's systemd takes inotify instances from the host's one
# per-user budget, and the kernel default (128) runs out at about one stack of
# ten: the next container's systemd stalls at boot ("Failed to create inotify
# object: Too many open files") and never starts sshd. LXD's production setup
# guide raises both limits; raise them here (no sysctl.d without systemd), only
# ever upwards.
raise_sysctl() {
  local key=$1 wanted=$2
  if [ "$(sysctl -n "$key")" -lt "$wanted" ]; then
    sysctl -qw "$key=$wanted" || log "could not raise $key to $wanted: more than one stack at a time may not boot"
  fi
}
raise_sysctl fs.inotify.max_user_instances 1024
raise_sysctl fs.inotify.max_user_watches 1048576

# dnsmasq-base is only recommended by lxd, but managed bridges need it for DHCP.
apt_ensure lxd lxd-client dnsmasq-base

# A daemon that is only slow to answer is waited for, never started twice. Its
# own session (setsid) keeps it alive when the shell that started it ends;
# it must not inherit the setup lock (fd 9), or the next setup waits forever.
# (Match the daemon's command line: its forkproxy helpers are also named lxd.)
if ! pgrep -f 'lxd --group' >/dev/null; then
  log "starting lxd (log: $LXD_LOG)"
  setsid nohup lxd --group lxd --logfile="$LXD_LOG" >>"$LXD_LOG.out" 2>&1 9>&- &
fi
timeout 60 lxd waitready || { tail -n 30 "$LXD_LOG" >&2; die "lxd did not answer within 60 s"; }

lxc storage show default >/dev/null 2>&1 || lxc storage create default dir >/dev/null
lxc network show lxdbr0 >/dev/null 2>&1 ||
  lxc network create lxdbr0 ipv4.address="$LXD_BRIDGE_ADDRESS" ipv4.nat=true ipv6.address=none >/dev/null
profile=$(lxc profile device list default)
grep -qx root <<<"$profile" || lxc profile device add default root disk path=/ pool=default >/dev/null
grep -qx eth0 <<<"$profile" || lxc profile device add default eth0 nic network=lxdbr0 name=eth0 >/dev/null

# The base image: its Docker image (scripts/build-base-image.sh, which builds
# it when missing) holds the rootfs as its only layer; LXD takes that layer as
# the rootfs of a split image next to a metadata tarball.
image=$(bash "$FF_ROOT/scripts/build-base-image.sh")
version=${image##*:}
alias_exists() { lxc query "/1.0/images/aliases/$1" >/dev/null 2>&1; }
if ! alias_exists "$image"; then
  log "importing $image into LXD"
  work=$(mktemp -d "$FF_CACHE/images/lxd.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  docker save "$image" -o "$work/image.tar"
  python3 - "$work/image.tar" "$work/rootfs.tar" <<'PY'
import json, shutil, sys, tarfile
saved, rootfs = sys.argv[1:]
with tarfile.open(saved) as tf:
    (manifest,) = json.load(tf.extractfile("manifest.json"))
    if len(manifest["Layers"]) != 1:
        sys.exit(f"expected an imported image with one layer, got {len(manifest['Layers'])}")
    with tf.extractfile(manifest["Layers"][0]) as src, open(rootfs, "wb") as out:
        shutil.copyfileobj(src, out)
PY
  rm "$work/image.tar"
  cat >"$work/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $(date +%s)
properties:
  description: flaskfleet base $version (Debian $BASE_SUITE, systemd)
  os: debian
  release: $BASE_SUITE
EOF
  tar -C "$work" -cf "$work/metadata.tar" metadata.yaml
  lxc image import "$work/metadata.tar" "$work/rootfs.tar" --alias "$image" >/dev/null
fi
fingerprint=$(lxc query "/1.0/images/aliases/$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target"])')

# flaskfleet-base follows the current recipe; images of older recipes go
# (instances keep their own copy of the rootfs).
if [ "$(lxc query /1.0/images/aliases/flaskfleet-base 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target"])' 2>/dev/null)" != "$fingerprint" ]; then
  lxc image alias delete flaskfleet-base >/dev/null 2>&1 || true
  lxc image alias create flaskfleet-base "$fingerprint"
fi
lxc query /1.0/images?recursion=1 | python3 -c '
import json, sys
keep, prefix = sys.argv[1], sys.argv[2]
for image in json.load(sys.stdin):
    names = [a["name"] for a in image["aliases"]]
    if image["fingerprint"] != keep and any(n.startswith(prefix) for n in names):
        print(image["fingerprint"])
' "$fingerprint" "$BASE_IMAGE_REPO:" | xargs -r -n 1 lxc image delete
log "lxd $(lxd --version): image $image ($fingerprint)"

# Docker sets the FORWARD policy to DROP, which also drops the LXD bridges'
# traffic to the package mirror. DOCKER-USER runs first in FORWARD: let through
# what touches no Docker bridge (docker0, br-*), and leave Docker's own traffic
# and isolation rules as they are.
if ! iptables -nL FLASKFLEET-LXD >/dev/null 2>&1; then
  iptables -N FLASKFLEET-LXD
fi
iptables -F FLASKFLEET-LXD
for match in "-i docker0" "-i br-+" "-o docker0" "-o br-+"; do
  # shellcheck disable=SC2086 # the match is two words on purpose
  iptables -A FLASKFLEET-LXD $match -j RETURN
done
iptables -A FLASKFLEET-LXD -j ACCEPT
iptables -C DOCKER-USER -j FLASKFLEET-LXD 2>/dev/null || iptables -I DOCKER-USER -j FLASKFLEET-LXD
