#!/usr/bin/env bash
# make bench: wrk from Debian's packages, vegeta built from its Go module
# (scripts/setup-vegeta.sh), then bench/run.py (see its docstring) with any
# arguments given, e.g. `make bench BENCH_ARGS='--reuse --label after'`.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"
apt_ensure wrk
bash "$FF_ROOT/scripts/setup-vegeta.sh"
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"
exec "$FF_ROOT/.venv/bin/python" bench/run.py "$@"
