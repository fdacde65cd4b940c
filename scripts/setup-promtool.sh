#!/usr/bin/env bash
# promtool, prometheus (which renders the console templates in monitoring/tests) and chromium
# (which screenshots them there) from Debian. Installing prometheus must not start the daemon:
# these machines have no systemd, and a Prometheus left on :9090 is not wanted. Where no
# policy-rc.d forbids service starts already (Docker images ship one), one does for the length
# of the install.
. "$(dirname "$0")/lib.sh"

command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null &&
  exit 0
hold_lock apt
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# Another suite's apt-get may hold dpkg's lock for a while: try again rather than fail.
for attempt in 1 2 3 4 5; do
  apt_ensure prometheus chromium && break
  log "apt-get failed (attempt $attempt), retrying in 15 s"
  sleep 15
done
command -v promtool >/dev/null || die "promtool is not installed"
command -v chromium >/dev/null || die "chromium is not installed"
