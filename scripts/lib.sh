# Shared helpers for scripts/: sourced, never run.
set -euo pipefail

FF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Built tools, downloads and images live outside git so a clone stays small and
# a second `make setup` reuses them.
FF_CACHE=${FF_CACHE:-$HOME/.cache/flaskfleet}
mkdir -p "$FF_CACHE"
# shellcheck source=../versions.env
. "$FF_ROOT/versions.env"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# apt-get install only what is missing; `apt-get update` once per run at most.
apt_ensure() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ ! -f /tmp/.flaskfleet-apt-updated ]; then
    apt-get update -qq && touch /tmp/.flaskfleet-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# sha256 of files' contents: the content version of a recipe.
content_hash() { cat "$@" | sha256sum | cut -c1-12; }

# Serialise a setup step across concurrent runs (make up beside make test):
# the second waits for the first and then finds its work done.
hold_lock() {
  exec 9>"$FF_CACHE/.$1.lock"
  flock 9
}
