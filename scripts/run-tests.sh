#!/usr/bin/env bash
# Runs test suites, FF_TEST_JOBS at a time (default 2: most suites wait on
# apt and containers, not on the CPU), keeps going past a failure, prints a
# table and closes with one summary line. A suite is a make target test-NAME,
# except molecule:NAME, which is `molecule test -s NAME`. Each suite's output
# goes to .test-logs/<suite>.log; a failed suite's tail is printed.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"

jobs=${FF_TEST_JOBS:-2}
logs="$FF_ROOT/.test-logs"
rm -rf "$logs"
mkdir -p "$logs"
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"

run_suite() {  # run_suite SUITE: writes $logs/<suite>.{log,result}
  local suite=$1 file=${1//:/-} begin=$SECONDS cmd status
  case "$suite" in
    molecule:*) cmd=(molecule test -s "${suite#molecule:}") ;;
    *) cmd=(make --no-print-directory "test-$suite") ;;
  esac
  log "start  $suite"
  if "${cmd[@]}" >"$logs/$file.log" 2>&1 </dev/null; then status=PASS; else status=FAIL; fi
  printf '%s %s %s\n' "$status" $((SECONDS - begin)) "$suite" >"$logs/$file.result"
  log "$status   $suite ($((SECONDS - begin)) s)"
}
export -f run_suite log
export logs

# In the order given (the Makefile's TEST_SUITES says why that order): each
# suite starts when a slot frees up. Suites never share a name: the stack
# suite's LXD stack (ff-test), the Terraform suite's (pt-*) and the Molecule
# scenarios' Docker containers live side by side.
printf '%s\n' "$@" | xargs -r -P "$jobs" -I{} bash -c 'run_suite "$1"' _ {}

passed=0
failed=0
echo
echo "---- test suites ($jobs at a time; logs in .test-logs/) ----"
for suite in "$@"; do
  file=${suite//:/-}
  read -r status seconds _ <"$logs/$file.result" || { status=FAIL; seconds=0; }
  if [ "$status" = PASS ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "==== $suite failed; last lines of .test-logs/$file.log:"
    tail -n 120 "$logs/$file.log"
    echo "===="
  fi
  # The suite's own count, where its runner prints one (pytest, molecule's verifier).
  counts=$(grep -aoE '[0-9]+ passed[^=]*' "$logs/$file.log" 2>/dev/null | tail -n 1 || true)
  printf '%-4s %5ss  %-22s %s\n' "$status" "$seconds" "$suite" "$counts"
done
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
