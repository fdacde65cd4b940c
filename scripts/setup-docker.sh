#!/usr/bin/env bash
# A Docker engine that answers: installed from Debian's packages and started in
# the background when none runs (these machines have no systemd on the host).
. "$(dirname "$0")/lib.sh"
hold_lock docker-engine

if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v dockerd >/dev/null || apt_ensure docker.io
# A daemon that is only slow to answer is waited for, never started twice. Its
# own session (setsid) keeps it alive when the shell that started it ends;
# it must not inherit the setup lock (fd 9), or the next setup waits forever.
if ! pgrep -x dockerd >/dev/null; then
  log "starting dockerd (log: /var/log/flaskfleet-dockerd.log)"
  setsid nohup dockerd >/var/log/flaskfleet-dockerd.log 2>&1 9>&- &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
tail -n 30 /var/log/flaskfleet-dockerd.log >&2
die "dockerd did not answer within 60 s"
