#!/usr/bin/env bash
# make loadtest: Locust's users against a running local stack (FF_STACK, default
# ff; FF_HTTP_PORT, default 8080); loadtest/run.py checks the arguments first, then
# drives it (see its docstring), e.g. `make loadtest LOADTEST_USERS=100 LOADTEST_TIME=5m`.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"
[ -x .venv/bin/python ] || die "no .venv: run make setup (and make up for a stack) first"
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"
exec "$FF_ROOT/.venv/bin/python" loadtest/run.py "$@"
