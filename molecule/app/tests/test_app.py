"""Behaviour of the app role: socket activation, health, TLS to PostgreSQL and Redis, reload,
releases, bad variables."""

import json
import re
import shlex
import tarfile
import zipfile

import pytest
import yaml
from conftest import (
    PORT,
    SCENARIO_DIR,
    build_release,
    diagnostics,
    eventually,
    host,
    http_get,
    main_pid,
    run_deploy,
    worker_pids,
)
from testlib import changed_nothing

BASE = "/opt/flaskfleet"


def current_release(app):
    return app.file(f"{BASE}/current").linked_to.rsplit("/", 1)[-1]


def test_socket_unit_listens_on_the_private_address(app, address):
    assert app.service("flaskfleet.socket").is_running, diagnostics(app)
    assert app.socket(f"tcp://{address}:{PORT}").is_listening, diagnostics(app)
    assert not app.socket(f"tcp://127.0.0.1:{PORT}").is_listening


def test_healthz_answers_200_with_the_release(app, address):
    status, headers, body = http_get(app, f"http://{address}:{PORT}/healthz")
    assert status == 200, body + diagnostics(app)
    assert headers["x-app-version"] == current_release(app)
    assert headers["x-served-by"]


def test_readyz_reports_the_primary_and_redis_ok(app, address):
    status, _, body = http_get(app, f"http://{address}:{PORT}/readyz")
    assert status == 200, body + diagnostics(app)
    checks = json.loads(body)["checks"]
    assert checks["primary"]["status"] == "ok", body
    assert checks["redis"]["status"] == "ok", body


CA_FILE = "/etc/flaskfleet/tls/ca.crt"


def env_urls(app, path: str) -> dict[str, str]:
    """The FLASKFLEET_*_URL values of an environment file the role wrote."""
    env = app.file(path).content_string
    return dict(re.findall(r'^(FLASKFLEET_[A-Z_]+_URL)="([^"]*)"$', env, re.MULTILINE))


def test_the_app_verifies_postgresql_and_redis_against_the_stacks_ca(app):
    urls = env_urls(app, "/etc/flaskfleet/flaskfleet.env")
    assert urls["FLASKFLEET_DATABASE_URL"].endswith(f"&sslmode=verify-full&sslrootcert={CA_FILE}")
    assert urls["FLASKFLEET_REDIS_URL"].startswith("rediss://")
    assert urls["FLASKFLEET_REDIS_URL"].endswith(f"?ssl_cert_reqs=required&ssl_ca_certs={CA_FILE}")
    ca = app.file(CA_FILE)
    assert (ca.user, ca.mode) == ("root", 0o644)
    assert app.run(f"runuser -u flaskfleet -- openssl x509 -in {CA_FILE} -noout").rc == 0


def test_writes_and_migrations_connect_to_whichever_database_host_accepts_writes(app):
    """The URLs name the postgres group's hosts (here one) and let libpq find the leader; with
    one host there is no standby to read from, so no replica URL."""
    postgres = host("app-postgres").interface("eth0").addresses[0]
    service = env_urls(app, "/etc/flaskfleet/flaskfleet.env")
    migrate = env_urls(app, "/etc/flaskfleet/migrate.env")
    for url in (service["FLASKFLEET_DATABASE_URL"], migrate["FLASKFLEET_DATABASE_URL"]):
        assert f"@{postgres}:5432/flaskfleet?target_session_attrs=read-write&" in url
    assert "FLASKFLEET_DATABASE_REPLICA_URL" not in service


def test_readyz_is_ok_over_tls_connections(app, address):
    """/readyz reaches both servers; the primary sees the app's sessions encrypted, and Redis has
    no plaintext port, so the app's Redis client there spoke TLS."""
    status, _, body = http_get(app, f"http://{address}:{PORT}/readyz")
    assert status == 200, body + diagnostics(app)
    postgres = host("app-postgres")
    # The only value in the SQL is the app host's own address.
    query = (
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"  # noqa: S608
        f" WHERE a.usename = 'flaskfleet' AND a.client_addr = '{address}'"
    )
    sessions = postgres.check_output(
        f"runuser -u postgres -- psql -XAtq -c {shlex.quote(query)}"
    ).split()
    assert sessions, "the app holds no connection to the primary after /readyz"
    assert set(sessions) == {"t|TLSv1.3"}, sessions
    group_vars = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"][
        "inventory"
    ]["group_vars"]["all"]
    redis = host("app-redis")
    redis_address = redis.interface("eth0").addresses[0]
    admin = shlex.quote(group_vars["redis_admin_password"])
    tls = f"--tls --cacert {CA_FILE}"
    cli = f"REDISCLI_AUTH={admin} redis-cli {tls} --user admin -h {redis_address}"
    assert redis.check_output(f"{cli} CONFIG GET port").split() == ["port", "0"]
    clients = redis.check_output(f"{cli} CLIENT LIST")
    assert re.search(rf"addr={re.escape(address)}:\d+ .*user=flaskfleet ", clients), clients


def test_service_runs_sandboxed_as_its_own_user(app):
    properties = dict(
        line.split("=", 1)
        for line in app.check_output(
            "systemctl show flaskfleet.service --property=Type,User,KillMode,ProtectSystem,"
            "ProtectHome,PrivateTmp,NoNewPrivileges,ProtectKernelTunables,RuntimeDirectory"
        ).splitlines()
    )
    assert properties == {
        "Type": "notify",
        "User": "flaskfleet",
        "KillMode": "mixed",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "RuntimeDirectory": "flaskfleet",
    }
    pid = main_pid(app)
    assert app.check_output(f"ps -o user= -p {pid}") == "flaskfleet"
    # The sandbox took effect in these containers, not just in the unit file.
    status = app.file(f"/proc/{pid}/status").content_string
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE), status
    assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status
    assert re.search(r"^CapBnd:\s+0+$", status, re.MULTILINE), status
    root_mount = app.check_output(f"awk '$5 == \"/\" {{print $6}}' /proc/{pid}/mountinfo")
    assert root_mount.startswith("ro,"), root_mount
    assert app.file("/run/flaskfleet/metrics").is_directory, diagnostics(app)


def test_environment_files_are_root_only(app):
    env = app.file("/etc/flaskfleet/flaskfleet.env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    assert "FLASKFLEET_DATABASE_URL=" in env.content_string
    migrate = app.file("/etc/flaskfleet/migrate.env")
    assert (migrate.user, migrate.group, migrate.mode) == ("root", "root", 0o600)


def test_the_service_runs_as_the_runtime_role_and_migrations_as_the_owner(app):
    service_env = app.file("/etc/flaskfleet/flaskfleet.env").content_string
    assert "//flaskfleet:" in service_env
    assert "flaskfleet_owner" not in service_env
    assert "//flaskfleet_owner:" in app.file("/etc/flaskfleet/migrate.env").content_string


def test_no_secret_in_a_log_or_a_command_line(app):
    """The migrations ran here (a transient unit reading the environment files): no secret of the
    scenario's inventory may appear in the journal, /var/log or any process's command line."""
    group_vars = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"][
        "inventory"
    ]["group_vars"]["all"]
    secrets = [
        value
        for name, value in group_vars.items()
        if name.endswith(("_password", "_secret_key")) and "{{" not in value
    ] + ["molecule-token-shop"]
    assert len(secrets) >= 5, secrets
    journal = app.check_output("journalctl --no-pager -o cat")
    assert "flaskfleet-migrate" in journal, "the migrations did not run as a transient unit here"
    for secret in secrets:
        for where, command in (
            ("journal", "journalctl --no-pager -o cat"),
            ("/var/log", "grep -rasF -- {s} /var/log; true"),
            ("process list", "ps -eo args"),
        ):
            output = app.run(command.format(s=shlex.quote(secret))).stdout
            assert secret not in output, f"a secret is in the {where}"


def test_reload_keeps_the_master_and_keeps_answering(app, address):
    master, workers = main_pid(app), worker_pids(app)
    app.check_output("systemctl reload flaskfleet")
    # The old workers stop at once; a request then waits in the socket's backlog while the new
    # workers import the app (the master holds none of it), seconds on a busy host: it is
    # delayed, not refused. Allowed the worker timeout.
    statuses = [
        http_get(app, f"http://{address}:{PORT}/healthz", max_time=30)[0] for _ in range(10)
    ]
    assert statuses == [200] * 10, diagnostics(app)
    new_workers = eventually(lambda: worker_pids(app).isdisjoint(workers) and worker_pids(app))
    assert new_workers, f"workers not replaced after HUP: {workers}" + diagnostics(app)
    assert main_pid(app) == master, diagnostics(app)


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ("app_release=../etc", "app_release '../etc' must be 1-64 characters"),
        ("app_secret_key=short", "app_secret_key must be at least 16 characters"),
        ('{"app_workers": "many"}', "app_workers"),
        (
            "app_worker_class=eventlet",
            "value of app_worker_class must be one of: sync, gthread, gevent, got: eventlet",
        ),
        ('{"app_threads": 4}', "app_threads 4 needs app_worker_class gthread (got sync)"),
        ("app_tls_ca_file=ca.crt", "pki_ca_file must be an absolute path"),
        ("pki_ca_dir=", "pki_ca_dir must be an absolute directory on the controller"),
        ("app_drain_tasks=drain.yml", "app_drain_tasks 'drain.yml' must be empty or the absolute"),
        ("app_db_group=postgres_standby", "Inventory group 'postgres_standby' (app_db_group) must"),
    ],
    ids=[
        "release-name",
        "short-secret-key",
        "workers-not-an-int",
        "unknown-worker-class",
        "threads-without-gthread",
        "relative-ca-file",
        "no-ca",
        "relative-drain-tasks",
        "no-database-group",
    ],
)
def test_bad_variable_fails_before_any_change(extra_vars, message):
    returncode, output = run_deploy(extra_vars)
    assert returncode != 0, output
    assert message in output, output
    assert changed_nothing(output), output


def workers_map_only(app, release):
    """Whether every worker's compiled modules come from release (and no other release)."""
    for pid in worker_pids(app):
        maps = app.file(f"/proc/{pid}/maps").content_string
        if not set(re.findall(rf"{BASE}/releases/([^/]+)/", maps)) <= {release}:
            return False
    return True


def app_files_of_the_workers(app):
    """Worker pid -> the file each running worker loaded the app from, as the worker logged it."""
    journal = app.check_output("journalctl -u flaskfleet.service -o cat --no-pager")
    loaded = {}
    for line in journal.splitlines():
        if line.startswith("{") and '"application loaded"' in line:
            entry = json.loads(line)
            loaded[str(entry["worker_pid"])] = entry["app_file"]
    return {pid: loaded.get(pid) for pid in worker_pids(app)}


def workers_run(app, release):
    """Whether every worker runs release's code: it loaded the app from the release's own files,
    and its compiled modules come from that release only."""
    files = app_files_of_the_workers(app)
    prefix = f"{BASE}/releases/{release}/venv/"
    return (
        bool(files)
        and all(path and path.startswith(prefix) for path in files.values())
        and workers_map_only(app, release)
    )


def switch_to(app, address, release, *extra_vars):
    """Deploy release; assert a graceful reload served it: same master, new code."""
    master = main_pid(app)
    returncode, output = run_deploy(f"app_release={release}", *extra_vars)
    assert returncode == 0, output + diagnostics(app)
    assert current_release(app) == release
    status, headers, _ = http_get(app, f"http://{address}:{PORT}/healthz")
    assert (status, headers.get("x-app-version")) == (200, release), diagnostics(app)
    assert main_pid(app) == master, "the master was restarted, not reloaded" + diagnostics(app)
    assert eventually(lambda: workers_run(app, release)), (
        f"workers do not run {release}: {app_files_of_the_workers(app)}" + diagnostics(app)
    )
    return output


def test_new_release_reloads_into_new_code_and_rollback_switches_back(app, address):
    previous = current_release(app)
    assert workers_run(app, previous), app_files_of_the_workers(app)
    # A fixed name, so the controller's build cache serves repeated scenario runs.
    release = f"{previous}-molecule"
    switch_to(app, address, release, f"app_release_archive={build_release(release)}")
    assert app.file(f"{BASE}/releases/{previous}/venv/bin/python").exists

    # Rolling back is deploying the previous name again: no archive, just the switch.
    switch_to(app, address, previous, "app_release_archive=/nonexistent/archive.tar")


def test_a_new_release_without_its_archive_fails_before_any_change(app):
    returncode, output = run_deploy(
        "app_release=never-built", "app_release_archive=/nonexistent.tar"
    )
    assert returncode != 0, output
    assert "build it first with `make release RELEASE=never-built`" in output, output
    assert not app.file(f"{BASE}/releases/never-built").exists


def test_a_wheel_that_does_not_match_its_hash_is_refused(app, address, tmp_path):
    """A release archive whose Flask wheel was altered after make release recorded its hash:
    pip refuses to install it and the release in service keeps serving."""
    in_service = current_release(app)
    with tarfile.open(build_release(in_service)) as archive:
        archive.extractall(tmp_path / "release", filter="data")
    wheel = next((tmp_path / "release" / "wheels").glob("flask-*.whl"))
    with zipfile.ZipFile(wheel, "a") as altered:
        altered.writestr("flask/injected.py", "print('not what was hashed')\n")
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as archive:
        for name in ("wheels", "requirements.txt", "gunicorn.conf.py"):
            archive.add(tmp_path / "release" / name, arcname=name)
    app.run("rm -rf /opt/flaskfleet/releases/tampered")
    returncode, output = run_deploy("app_release=tampered", f"app_release_archive={tampered}")
    assert returncode != 0, output
    assert "DO NOT MATCH THE HASHES" in output, output
    assert current_release(app) == in_service
    assert http_get(app, f"http://{address}:{PORT}/healthz")[0] == 200, diagnostics(app)
    app.run("rm -rf /opt/flaskfleet/releases/tampered")
