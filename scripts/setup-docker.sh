#!/usr/bin/env bash
# A Docker engine that answers: installed from Debian's packages and started in
# the background when none runs (these machines have no systemd on the host).
. "$(dirname "$0")/lib.sh"
hold_lock docker-engine

if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v dockerd >/dev/null || apt_ensure docker.io
log "starting dockerd (log: /var/log/flaskfleet-dockerd.log)"
nohup dockerd >/var/log/flaskfleet-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
tail -n 30 /var/log/flaskfleet-dockerd.log >&2
die "dockerd did not answer within 60 s"
