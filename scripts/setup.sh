#!/usr/bin/env bash
# `make setup`: everything a fresh machine of this kind needs, idempotent and
# cached (a second run reuses every piece).
. "$(dirname "$0")/lib.sh"
start=$SECONDS
scripts="$FF_ROOT/scripts"

# PostgreSQL and Redis binaries for the app's tests, which start their own
# servers on 127.0.0.1 (the packages' own services are not used).
apt_ensure postgresql-15 redis-server
bash "$scripts/setup-python.sh"
bash "$scripts/setup-docker.sh"
bash "$scripts/build-base-image.sh" >/dev/null
bash "$scripts/setup-terraform.sh"
bash "$scripts/setup-lxd.sh"
log "setup complete in $((SECONDS - start)) s"
