#!/usr/bin/env bash
# Python virtual environments from the locks in requirements/: .venv for
# everything, .venv-checkov for the Terraform scanner (its pins clash with pytest).
# Every package is checked against the hashes in the lock (--require-hashes),
# uv itself too: its pin and hashes are taken from requirements/main.txt.
. "$(dirname "$0")/lib.sh"
hold_lock python-venvs

sync_venv() {  # sync_venv DIR LOCKFILE
  local venv="$FF_ROOT/$1" lock="$FF_ROOT/$2" stamp want
  stamp="$venv/.flaskfleet-lock"
  want=$(content_hash "$lock")
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  log "installing $2 into $1"
  [ -x "$FF_ROOT/.venv/bin/uv" ] || {
    [ -x "$FF_ROOT/.venv/bin/python" ] || python3 -m venv "$FF_ROOT/.venv"
    "$FF_ROOT/.venv/bin/pip" install -q --require-hashes --no-deps \
      -r <(sed -n '/^uv==/,/^[^ ]/{/^uv==/p;/^ /p}' "$FF_ROOT/requirements/main.txt")
  }
  [ -x "$venv/bin/python" ] || "$FF_ROOT/.venv/bin/uv" venv -q --python python3 "$venv"
  VIRTUAL_ENV=$venv "$FF_ROOT/.venv/bin/uv" pip sync -q --require-hashes "$lock"
  echo "$want" >"$stamp"
}

sync_venv .venv requirements/main.txt
sync_venv .venv-checkov requirements/checkov.txt

# ansible.cfg and the Molecule config name Mitogen's strategy plugins by this
# link, whichever Python version the venv was made with.
ln -sfn "$("$FF_ROOT/.venv/bin/python" -c 'import ansible_mitogen, pathlib
print(pathlib.Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")')" \
  "$FF_ROOT/.venv/mitogen-strategies"
