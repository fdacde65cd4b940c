#!/usr/bin/env bash
# make logs REQUEST_ID=<id>: every journal line that names one request, from
# every host of a running local stack (FF_STACK, default ff), oldest first,
# each line led by its host. The lines come from the monitor's copy of every
# host's journal (the journal role: /var/log/journal/remote on
# <stack>-monitor), read with `lxc exec` as the stack tests reach the VMs.
# The id is what nginx passes on as X-Request-ID: 1-128 of [A-Za-z0-9._-].
. "$(dirname "$0")/lib.sh"

stack=${FF_STACK:-ff}
monitor=$stack-monitor
remote_dir=/var/log/journal/remote
request_id=${1:-}

if ! [[ $request_id =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then
  printf 'usage: make logs REQUEST_ID=<id>  (1-128 of A-Z a-z 0-9 . _ -; got %q)\n' "$request_id" >&2
  exit 2
fi

command -v lxc >/dev/null || die "no lxc on this machine: make logs reads a local (LXD) stack"
lxc info "$monitor" >/dev/null 2>&1 ||
  die "no instance $monitor: is the stack '$stack' up (make up, or FF_STACK=<name>) with its monitor tier?"

lxc exec "$monitor" -- test -d "$remote_dir" ||
  die "no $remote_dir on $monitor: the journal role has not run there"

# --grep is a PCRE: the id's dots stand for themselves, and it must not be
# part of a longer id. --merge interleaves the hosts' journals by time;
# short-iso puts the host second, moved first. journalctl exits 1 when
# nothing matches.
pattern="(?<![A-Za-z0-9._-])${request_id//./\\.}(?![A-Za-z0-9._-])"
status=0
lines=$(lxc exec "$monitor" -- journalctl --directory="$remote_dir" --merge --quiet --no-pager \
  --output=short-iso --case-sensitive=true --grep="$pattern") || status=$?
if [ -z "$lines" ]; then
  [ "$status" -le 1 ] || die "journalctl on $monitor failed (exit $status)"
  echo "no lines about request $request_id on any host of $stack" >&2
  exit 1
fi
sed -E 's/^([^ ]+) ([^ ]+) /\2 \1 /' <<<"$lines"
