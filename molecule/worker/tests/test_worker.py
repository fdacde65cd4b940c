"""Behaviour of the worker role: the Celery worker runs the app's tasks against PostgreSQL, a
stop finishes the task in flight (warm shutdown), one redbeat scheduler holds the lock, the
queue is a Redis for queues (no eviction, AOF, its own users), a new release restarts into it,
and bad variables fail before any change."""

import re
import shlex
import subprocess
import uuid

import pytest
from conftest import (
    CA_FILE,
    PROJECT_DIR,
    SCENARIO_DIR,
    SECRETS,
    UNITS,
    diagnostics,
    eventually,
    exposure,
    redis_admin,
    run_playbook,
    run_role_with,
    sql,
)
from testlib import private_ip

METRICS_PORT = 9808


def metrics(worker):
    return worker.run(f"curl -sS --max-time 5 http://{private_ip(worker)}:{METRICS_PORT}/metrics")


def order_status(postgres, public_id):
    uuid.UUID(public_id)  # only a UUID goes into the query
    return sql(postgres, f"SELECT status FROM orders WHERE public_id = '{public_id}'")  # noqa: S608


def receipt_total(postgres, public_id):
    uuid.UUID(public_id)  # only a UUID goes into the query
    receipts = "order_receipts r JOIN orders o ON o.id = r.order_id"
    return sql(postgres, f"SELECT r.total_cents FROM {receipts} WHERE o.public_id = '{public_id}'")  # noqa: S608


def test_units_run_sandboxed_as_the_service_user(worker):
    for unit in UNITS:
        assert worker.service(unit).is_running, diagnostics(worker)
        assert worker.service(unit).is_enabled
        properties = dict(
            line.split("=", 1)
            for line in worker.check_output(
                f"systemctl show {unit} --property=User,KillMode,ProtectSystem,NoNewPrivileges"
            ).splitlines()
        )
        assert properties == {
            "User": "flaskfleet",
            "KillMode": "mixed",
            "ProtectSystem": "strict",
            "NoNewPrivileges": "yes",
        }, unit
        pid = worker.check_output(f"systemctl show --property=MainPID --value {unit}")
        status = worker.file(f"/proc/{pid}/status").content_string
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), status
        assert re.search(r"^CapBnd:\s+0+$", status, re.MULTILINE), status


@pytest.mark.parametrize("unit", UNITS)
def test_sandbox_scores_3_or_better(worker, unit):
    assert exposure(worker, unit) <= 3.0


def test_worker_stop_timeout_outlasts_the_task_time_limit(worker):
    """A warm stop may take as long as the longest task: systemd waits longer before killing."""
    timeout = worker.check_output(
        "systemctl show --property=TimeoutStopUSec --value flaskfleet-worker.service"
    )
    env = worker.file("/etc/flaskfleet/worker.env").content_string
    limit = int(re.search(r'^FLASKFLEET_TASK_TIME_LIMIT="(\d+)"$', env, re.MULTILINE)[1])
    assert timeout == "5min 30s", timeout
    assert limit == 300
    # A report's queries may run as long as its task: the app's request timeout would cut them.
    statement = re.search(r'^FLASKFLEET_DB_STATEMENT_TIMEOUT="(\d+)"$', env, re.MULTILINE)
    assert statement is not None, "the worker's statement timeout is not set"
    assert int(statement[1]) == limit


def test_environment_file_is_root_only_and_names_the_consumer(worker):
    env = worker.file("/etc/flaskfleet/worker.env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    assert "//flaskfleet_worker:" in env.content_string
    assert "flaskfleet_producer" not in env.content_string
    assert "flaskfleet_owner" not in env.content_string


def test_the_worker_connects_to_whichever_database_host_accepts_writes(worker, postgres):
    """The URL names the postgres group's hosts (here one) and lets libpq find the leader, over
    verified TLS; with one host there is no standby to read from, so no replica URL."""
    env = worker.file("/etc/flaskfleet/worker.env").content_string
    url = re.search(r'^FLASKFLEET_DATABASE_URL="([^"]*)"$', env, re.MULTILINE)
    assert url is not None, "the worker's database URL is not set"
    assert url[1].endswith(
        f"@{private_ip(postgres)}:5432/flaskfleet?target_session_attrs=read-write"
        f"&sslmode=verify-full&sslrootcert={CA_FILE}"
    )
    assert "FLASKFLEET_DATABASE_REPLICA_URL" not in env


def test_metrics_served_on_the_private_address(worker):
    result = metrics(worker)
    assert result.rc == 0, result.stderr + diagnostics(worker)
    assert 'flaskfleet_queue_length{queue="flaskfleet"}' in result.stdout, result.stdout
    assert "flaskfleet_outbox_unsent" in result.stdout, result.stdout
    assert not worker.socket(f"tcp://127.0.0.1:{METRICS_PORT}").is_listening


def test_worker_runs_the_current_release(worker):
    release = worker.file("/opt/flaskfleet/current").linked_to
    pid = worker.check_output("systemctl show --property=MainPID --value flaskfleet-worker")
    maps = worker.file(f"/proc/{pid}/maps").content_string
    assert set(re.findall(r"/opt/flaskfleet/releases/([^/]+)/", maps)) == {
        release.rsplit("/", 1)[-1]
    }


def test_an_order_is_confirmed_by_the_worker(worker, postgres, place_order):
    order = place_order(f"MOL-{uuid.uuid4().hex[:8]}")
    assert eventually(lambda: order_status(postgres, order["id"]) == "confirmed"), order_status(
        postgres, order["id"]
    ) + diagnostics(worker)
    assert receipt_total(postgres, order["id"]) == "1400"


def test_queue_is_a_broker_not_a_cache(queue):
    answers = redis_admin(
        queue, "CONFIG GET maxmemory-policy", "CONFIG GET appendonly", "CONFIG GET appendfsync"
    )
    assert answers == [
        "maxmemory-policy",
        "noeviction",
        "appendonly",
        "yes",
        "appendfsync",
        "everysec",
    ], answers
    users = redis_admin(queue, "ACL USERS")
    # The queue's own users (group_vars/queue/redis.yml): its producer, its consumers and
    # the metrics exporter, none of the cache's.
    queue_users = ["flaskfleet_exporter", "flaskfleet_producer", "flaskfleet_worker"]
    assert users == ["admin", "default", *queue_users], users


def test_the_producer_cannot_take_tasks_off_the_queue(queue):
    password = SECRETS["vault_queue_producer_password"]
    script = f"AUTH flaskfleet_producer {password}\nRPOP ffq:flaskfleet"
    cli = f"redis-cli --tls --cacert {CA_FILE} -h {private_ip(queue)}"
    result = queue.run(f"{cli} <<'EOF'\n{script}\nEOF")
    assert result.stdout.splitlines()[0] == "OK", result.stdout
    assert "NOPERM" in result.stdout, result.stdout


def test_transactions_in_the_append_only_file_survive_a_restart(worker, queue):
    """redbeat's schedule and kombu's unacknowledged tasks are written in MULTI/EXEC; Redis 7.0
    replays those as the `default` user, which the ACL must allow (users.acl.j2)."""
    key = "ffq:molecule-transaction"
    assert redis_admin(queue, "MULTI", f"SET {key} kept", "EXEC") == ["OK", "QUEUED", "OK"]
    queue.check_output("systemctl restart redis-server")
    kept = eventually(lambda: redis_admin(queue, f"GET {key}") == ["kept"], timeout=30)
    assert kept, queue.run("journalctl -u redis-server -o cat --no-pager -n 20").stdout
    redis_admin(queue, f"DEL {key}")
    # The scheduler kept running through the restart and still holds the lock.
    assert worker.service("flaskfleet-beat").is_running
    assert eventually(
        lambda: [k for k in redis_admin(queue, "KEYS ffq:redbeat::lock") if k], timeout=30
    )


def test_one_scheduler_holds_the_redbeat_lock(worker, queue):
    """A second scheduler starts, waits for the redbeat lock, sends nothing while the unit holds it;
    when the unit stops (releasing the lock) the second takes over."""
    locks = [key for key in redis_admin(queue, "KEYS ffq:redbeat*lock*") if key]
    assert len(locks) == 1, locks
    second = "molecule-beat-2"
    started = worker.run(
        f"systemd-run --unit={second} --uid=flaskfleet --gid=flaskfleet"
        " --property=EnvironmentFile=/etc/flaskfleet/worker.env --working-directory=/tmp"
        " /opt/flaskfleet/current/venv/bin/celery --app flaskfleet.worker beat --loglevel INFO"
    )
    assert started.rc == 0, started.stderr
    try:
        sent = f"journalctl -u {second} -o cat --no-pager | grep -c 'Sending due task' || true"
        assert eventually(lambda: "beat: Starting" in journal_of(worker, second), timeout=30), (
            journal_of(worker, second)
        )
        since = worker.check_output("date '+%Y-%m-%d %H:%M:%S'")
        worker.run("sleep 6")
        assert worker.check_output(sent) == "0", journal_of(worker, second)
        holder = worker.check_output(
            f"journalctl -u flaskfleet-beat --since '{since}' -o cat --no-pager"
        )
        assert "Sending due task" in holder, holder
        worker.check_output("systemctl stop flaskfleet-beat")
        assert eventually(lambda: worker.check_output(sent) != "0", timeout=30), journal_of(
            worker, second
        )
    finally:
        worker.run(f"systemctl stop {second}")
        worker.run("systemctl start flaskfleet-beat")
    assert worker.service("flaskfleet-beat").is_running


def journal_of(worker, unit):
    return "\n" + worker.run(f"journalctl -u {unit} -o cat --no-pager -n 40").stdout


def test_stop_lets_the_running_task_finish(worker, postgres, place_order):
    """systemctl stop during a task: Celery's warm shutdown waits for it. The task is held in
    flight by a lock on order_receipts (its INSERT waits), the stop is issued, and only then
    is the lock released: the order is confirmed and the journal shows the warm shutdown."""
    holder = "molecule-hold-receipts"
    postgres.check_output(
        f"systemd-run --unit={holder} runuser -u postgres -- psql -d flaskfleet -Xq -c "
        + shlex.quote(
            "BEGIN; LOCK TABLE order_receipts IN SHARE MODE; SELECT pg_sleep(60); COMMIT;"
        )
    )
    try:
        assert eventually(
            lambda: (
                sql(
                    postgres,
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " WHERE c.relname = 'order_receipts' AND l.mode = 'ShareLock' AND l.granted",
                )
                == "1"
            )
        )
        order = place_order(f"MOL-{uuid.uuid4().hex[:8]}")
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'flaskfleet'"
            " AND wait_event_type = 'Lock'"
        )
        assert eventually(lambda: sql(postgres, waiting) == "1"), diagnostics(worker)
        since = worker.check_output("date '+%Y-%m-%d %H:%M:%S'")
        worker.check_output("systemctl stop --no-block flaskfleet-worker")
        worker.run("sleep 3")
        # Still stopping, the task still waiting: nothing was killed.
        state = worker.check_output("systemctl is-active flaskfleet-worker || true")
        assert state == "deactivating", state + diagnostics(worker)
        assert sql(postgres, waiting) == "1"
        assert order_status(postgres, order["id"]) == "reserved"
    finally:
        postgres.run(
            'runuser -u postgres -- psql -d flaskfleet -XAtq -c "SELECT pg_cancel_backend(pid)'
            " FROM pg_stat_activity WHERE query LIKE '%LOCK TABLE order_receipts%'"
            ' AND pid <> pg_backend_pid()"'
        )
        postgres.run(f"systemctl stop {holder}")
    try:
        assert eventually(
            lambda: (
                worker.check_output("systemctl is-active flaskfleet-worker || true")
                in {"inactive", "failed"}
            ),
            timeout=60,
        ), diagnostics(worker)
        result = worker.check_output("systemctl show --property=Result --value flaskfleet-worker")
        assert result == "success", result + diagnostics(worker)
        assert order_status(postgres, order["id"]) == "confirmed", diagnostics(worker)
        stopped = worker.check_output(
            f"journalctl -u flaskfleet-worker --since '{since}' -o cat --no-pager"
        )
        assert "Warm shutdown" in stopped, stopped
    finally:
        worker.run("systemctl start flaskfleet-worker")
    assert eventually(lambda: metrics(worker).rc == 0), diagnostics(worker)


def test_no_secret_in_a_log_or_a_command_line(worker, queue, postgres):
    secrets = list(SECRETS.values())
    assert len(secrets) >= 6, secrets
    for target in (worker, queue, postgres):
        for where, command in (
            ("journal", "journalctl --no-pager -o cat"),
            ("/var/log", "grep -rasF -- {s} /var/log; true"),
            ("process list", "ps -eo args"),
        ):
            for secret in secrets:
                output = target.run(command.format(s=shlex.quote(secret))).stdout
                assert secret not in output, f"a secret is in the {where} of {target}"


def test_a_new_release_restarts_the_worker_into_it(worker, postgres, place_order):
    """deploy.yml's step for a worker: the role with a new app_release installs it, restarts the
    worker (a warm stop) and proves it runs it; tasks are confirmed by the new code."""
    build = subprocess.run(
        ["bash", "scripts/release.sh", "molecule-2"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    returncode, output = run_playbook(SCENARIO_DIR / "deploy.yml", "app_release=molecule-2")
    assert returncode == 0, output + diagnostics(worker)
    assert worker.file("/opt/flaskfleet/current").linked_to == "/opt/flaskfleet/releases/molecule-2"
    pid = worker.check_output("systemctl show --property=MainPID --value flaskfleet-worker")
    maps = worker.file(f"/proc/{pid}/maps").content_string
    assert set(re.findall(r"/opt/flaskfleet/releases/([^/]+)/", maps)) == {"molecule-2"}
    order = place_order(f"MOL-{uuid.uuid4().hex[:8]}")
    assert eventually(lambda: order_status(postgres, order["id"]) == "confirmed"), diagnostics(
        worker
    )
    # Back to the first release: on the host already, so no archive is needed.
    returncode, output = run_playbook(SCENARIO_DIR / "deploy.yml", "app_release=molecule-1")
    assert returncode == 0, output + diagnostics(worker)
    assert worker.file("/opt/flaskfleet/current").linked_to == "/opt/flaskfleet/releases/molecule-1"


BASE_VARS = {
    "worker_release": "molecule-1",
    "worker_db_password": "pw",
    "worker_broker_password": "pw",
    "worker_secret_key": "molecule-secret-key-0123456789",
}


@pytest.mark.parametrize(
    ("bad_vars", "message"),
    [
        ({"worker_concurrency": 0}, "worker_concurrency must be from 1 to 256 (got 0)"),
        ({"worker_concurrency": "many"}, "worker_concurrency"),
        ({"worker_queues": ["flaskfleet", "celery"]}, "(unknown: ['celery'])"),
        ({"worker_queues": []}, "worker_queues must name at least one of the app's queues"),
        (
            {"worker_task_time_limit": 600, "worker_stop_timeout": 600},
            "worker_task_time_limit (600 s) must be at least 1 and less than"
            " worker_stop_timeout (600 s)",
        ),
        (
            {"worker_task_time_limit": 3600},
            "must be less than worker_task_visibility_timeout (3600 s)",
        ),
        ({"worker_release": "../etc"}, "worker_release '../etc' must be 1-64 characters"),
        ({"worker_secret_key": "short"}, "worker_secret_key must be at least 16 characters"),
        (
            {"worker_db_group": "postgres_standby"},
            "Inventory group 'postgres_standby' (worker_db_group) must exist and hold the",
        ),
    ],
    ids=[
        "concurrency-0",
        "concurrency-not-an-int",
        "unknown-queue",
        "no-queue",
        "time-limit-not-below-stop-timeout",
        "time-limit-not-below-visibility-timeout",
        "release-name",
        "short-secret-key",
        "no-database-group",
    ],
)
def test_bad_variable_fails_before_any_change(bad_vars, message):
    result = run_role_with("worker", {**BASE_VARS, **bad_vars})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in " ".join(output.split()), output
