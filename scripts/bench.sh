#!/usr/bin/env bash
# make bench: wrk from Debian's packages, then bench/run.py (see its docstring)
# with any arguments given, e.g. `make bench BENCH_ARGS='--reuse --label after'`.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"
apt_ensure wrk
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"
exec "$FF_ROOT/.venv/bin/python" bench/run.py "$@"
