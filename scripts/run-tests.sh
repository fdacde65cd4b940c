#!/usr/bin/env bash
# Runs test suites, keeps going past a failure, prints a table and closes with
# one summary line. A suite is a make target test-NAME, except molecule:NAME,
# which is `molecule test -s NAME`. Each suite's output goes to
# .test-logs/<suite>.log; a failed suite's tail is printed.
#
# The stack suite, when asked for, runs in a lane of its own, started first, at
# normal priority: its tests are partly timing-sensitive (failovers under load,
# breakers, alerts, micro-cache TTLs). The other suites run beside it,
# FF_TEST_JOBS at a time (default 2), in the order given, at the lowest
# priority: under nice 19 on the host, and with Docker's containers (the
# Molecule scenarios') holding a quarter of the CPU weight one stack VM holds,
# for as long as this run lasts. The machine is CPU-bound either way; so the
# stack takes the CPU whenever it wants it and the other suites fill what it
# leaves. The Molecule scenarios wait until its stack is up (the
# bring-up takes both cores, too long for their own timeouts); the short
# suites run beside the bring-up. When the stack suite ends, its lane takes
# suites from the same queue: the Molecule scenarios left then run three at a
# time, which uses the CPU their waits (elections, TTLs, timers) leave idle.
. "$(dirname "$0")/lib.sh"
cd "$FF_ROOT"

jobs=${FF_TEST_JOBS:-2}
case "$jobs" in '' | *[!0-9]* | 0) die "FF_TEST_JOBS must be a positive whole number (got '$jobs')" ;; esac
logs="$FF_ROOT/.test-logs"
rm -rf "$logs"
mkdir -p "$logs"
export PATH="$FF_ROOT/.venv/bin:$FF_ROOT/.tools:$PATH"

run_suite() {  # run_suite SUITE: writes $logs/<suite>.{log,result}
  local suite=$1 file=${1//:/-} begin cmd status
  case "$suite" in
    molecule:*)
      cmd=(molecule test -s "${suite#molecule:}")
      # Set only when the stack suite runs too (see above).
      if [ -n "${FF_STACK_UP_FILE:-}" ]; then
        while [ ! -e "$FF_STACK_UP_FILE" ]; do sleep 5; done
      fi
      ;;
    *) cmd=(make --no-print-directory "test-$suite") ;;
  esac
  begin=$SECONDS
  log "start  $suite"
  if "${cmd[@]}" >"$logs/$file.log" 2>&1 </dev/null; then status=PASS; else status=FAIL; fi
  printf '%s %s %s\n' "$status" $((SECONDS - begin)) "$suite" >"$logs/$file.result"
  log "$status   $suite ($((SECONDS - begin)) s)"
}
export -f run_suite log
export logs

# Docker's CPU weight beside the stack's VMs (cgroup v1, where LXD gives each
# VM a weight of 1024 and Docker's containers share one group), lowered while
# the stack suite runs and put back when this run ends however it ends.
lower_docker_cpu_weight() {
  local shares=/sys/fs/cgroup/cpu/docker/cpu.shares saved
  if [ ! -w "$shares" ]; then
    log "no cgroup v1 CPU group for Docker here ($shares): the Molecule scenarios keep their CPU weight"
    return 0
  fi
  saved=$(cat "$shares")
  echo 256 >"$shares"
  # shellcheck disable=SC2064 # the value and path are meant to be fixed now
  trap "echo $saved >$shares" EXIT
  # A run stopped from outside (a CI time limit) exits through the EXIT trap too.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  log "Docker's CPU weight $saved -> 256 for this run"
}

# In the order given (the Makefile's TEST_SUITES says why that order): each
# lane takes the queue's next suite when it is free. Suites never share a name:
# the stack suite's LXD stack (ff-test), the Terraform suite's (pt-*) and the
# Molecule scenarios' Docker containers live side by side.
queue="$logs/queue"
next_suite() {  # prints the queue's first suite and removes it; nothing once it is empty
  {
    flock 9
    head -n 1 "$queue"
    sed -i 1d "$queue"
  } 9>"$queue.lock"
}
lane() {  # runs suites from the queue until it is empty
  local suite
  while suite=$(next_suite) && [ -n "$suite" ]; do run_suite "$suite"; done
}
export -f next_suite lane
export queue

others=()
stack_lane=
for suite in "$@"; do
  if [ "$suite" = stack ]; then stack_lane=1; else others+=("$suite"); fi
done
printf '%s\n' "${others[@]}" >"$queue"
priority=()
lanes=()
if [ -n "$stack_lane" ]; then
  lower_docker_cpu_weight
  # tests/stack/conftest.py creates it once the stack is up; the lane creates it
  # when the suite ends, so that nothing waits on a bring-up that failed.
  export FF_STACK_UP_FILE="$logs/stack.up"
  # At the lowest priority a playbook's controller can get next to no CPU for
  # minutes while the stack suite runs one: Ansible's connection timeout there
  # (ansible.cfg says why Mitogen needs more than 10 s) is 300 s, not 30.
  priority=(env ANSIBLE_TIMEOUT=300 nice -n 19)
  (run_suite stack; touch "$FF_STACK_UP_FILE"; exec "${priority[@]}" bash -c lane) &
  lanes+=($!)
fi
for ((i = 0; i < jobs; i++)); do
  "${priority[@]}" bash -c lane &
  lanes+=($!)
done
# A lane that died leaves its suites without a result: the table counts them failed.
wait "${lanes[@]}" || true

passed=0
failed=0
echo
echo "---- test suites (logs in .test-logs/) ----"
for suite in "$@"; do
  file=${suite//:/-}
  read -r status seconds _ <"$logs/$file.result" || { status=FAIL; seconds=0; }
  if [ "$status" = PASS ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    # Ansible's and OpenTofu's errors come minutes before a log's end (Molecule's
    # destroy, a fixture's teardown follow them): their first lines are printed too.
    echo "==== $suite failed; first errors in .test-logs/$file.log:"
    grep -aE -A 4 'fatal: \[|UNREACHABLE!|FAILED! =>|Error: ' "$logs/$file.log" | head -n 40 || true
    echo "==== last lines of .test-logs/$file.log:"
    tail -n 120 "$logs/$file.log"
    echo "===="
  fi
  # The suite's own count, where its runner prints one (pytest, molecule's verifier).
  counts=$(grep -aoE '[0-9]+ passed[^=]*' "$logs/$file.log" 2>/dev/null | tail -n 1 || true)
  printf '%-4s %5ss  %-22s %s\n' "$status" "$seconds" "$suite" "$counts"
done
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
