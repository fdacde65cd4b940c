#!/usr/bin/env bash
# Runs test suites one after another, keeps going past a failure, prints a
# table and closes with one summary line. A suite is a make target test-NAME,
# except molecule:NAME, which is `molecule test -s NAME`.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"

results=()
passed=0
failed=0
for suite in "$@"; do
  log "suite $suite"
  begin=$SECONDS
  case "$suite" in
    molecule:*) cmd=(.venv/bin/molecule test -s "${suite#molecule:}") ;;
    *) cmd=(make --no-print-directory "test-$suite") ;;
  esac
  if PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH" "${cmd[@]}"; then
    status=PASS; passed=$((passed + 1))
  else
    status=FAIL; failed=$((failed + 1))
  fi
  results+=("$(printf '%-4s %5ss  %s' "$status" $((SECONDS - begin)) "$suite")")
done

echo
echo "---- test suites ----"
printf '%s\n' "${results[@]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
