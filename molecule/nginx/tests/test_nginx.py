"""Behaviour of the nginx role: requests through the load balancer reach both
app hosts, a dead or drained upstream is skipped, limits and headers hold and
bad variables are refused. Tests run in file order; the disruptive ones last."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
PROJECT_DIR = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
APPS = ("nginx-app1", "nginx-app2")

LB = testinfra.get_host(f"ansible://nginx-lb?ansible_inventory={INVENTORY}")
APP = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in APPS}


def diagnostics():
    return (
        LB.run("journalctl -u nginx --no-pager -n 30").stdout
        + LB.run("tail -n 5 /var/log/nginx/error.log /var/log/nginx/access.log").stdout
    )


def names_seen(requests=8, url="http://127.0.0.1/"):
    """Send requests through the load balancer; return the upstream names answering."""
    result = LB.run(f"for i in $(seq {requests}); do curl -sf -m 5 {url} || echo FAILED; done")
    return result.stdout.split()


def ansible_playbook(*args, env=None):
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *args],
        cwd=PROJECT_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_config_is_valid():
    result = LB.run("nginx -t")
    assert result.rc == 0, result.stderr + diagnostics()


def test_debian_default_site_removed():
    assert not LB.file("/etc/nginx/sites-enabled/default").exists


def test_health_endpoint():
    result = LB.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/nginx-health")
    assert result.stdout == "200", diagnostics()


def test_requests_reach_both_app_hosts():
    seen = names_seen()
    assert "FAILED" not in seen, diagnostics()
    assert set(seen) == set(APPS), f"{seen}\n{diagnostics()}"


def test_tls_serves_the_app():
    assert LB.run("curl -skf -m 5 https://127.0.0.1/").stdout.strip() in APPS, diagnostics()


def test_security_headers():
    headers = LB.check_output("curl -sf -D - -o /dev/null http://127.0.0.1/").lower()
    for header in (
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "content-security-policy: default-src 'none'",
        "x-request-id: ",
    ):
        assert header in headers, headers
    assert "server: nginx\r\n" in headers, "server_tokens should hide the version"


def test_request_id_passed_through_and_logged_as_json():
    headers = LB.check_output(
        "curl -sf -D - -o /dev/null -H 'X-Request-ID: ff-test-42' http://127.0.0.1/"
    )
    assert "X-Request-ID: ff-test-42" in headers
    entry = json.loads(LB.check_output("tail -n 1 /var/log/nginx/access.log"))
    assert entry["request_id"] == "ff-test-42"
    assert entry["status"] == 200
    assert entry["upstream_addr"].endswith(":8000")
    for key in ("upstream_response_time", "upstream_connect_time", "request_time"):
        assert key in entry, entry


def test_malformed_request_id_replaced():
    headers = LB.check_output(
        "curl -sf -D - -o /dev/null -H 'X-Request-ID: bad id{}' http://127.0.0.1/"
    )
    request_id = next(
        line.split(":", 1)[1].strip()
        for line in headers.splitlines()
        if line.startswith("X-Request-ID")
    )
    assert len(request_id) == 32 and all(c in "0123456789abcdef" for c in request_id), request_id


def test_gzip():
    headers = LB.check_output(
        "curl -sf -D - -o /dev/null -H 'Accept-Encoding: gzip' http://127.0.0.1/big.txt"
    )
    assert "Content-Encoding: gzip" in headers, headers


def api_reads(headers="", requests=8):
    """(upstream name, X-Micro-Cache) of GETs of a micro-cached API resource."""
    out = LB.check_output(
        f"for i in $(seq {requests}); do curl -sf -m 5 -D /tmp/h {headers} "
        "http://127.0.0.1/api/v1/products/1 | tr -d '\\n'; echo \" "
        "$(sed -n 's/^X-Micro-Cache: *//Ip' /tmp/h | tr -d '\\r')\"; done"
    )
    return [tuple(line.split()) for line in out.splitlines()]


def test_anonymous_api_reads_are_micro_cached():
    reads = api_reads()
    assert len(reads) == 8, reads
    # The first read fills the entry (or finds one less than a TTL old); the rest
    # are served by nginx, all with the first answer.
    assert {status for _, status in reads[1:]} == {"HIT"}, reads
    assert len({name for name, _ in reads}) == 1, reads
    # The TTL is 1 s of nginx's clock, which counts whole seconds: gone 1 to 2 s later.
    LB.run("sleep 2.5")
    assert api_reads(requests=1)[0][1] in {"EXPIRED", "MISS"}, "the TTL is 1 s"


@pytest.mark.parametrize(
    "credentials",
    ["-H 'Authorization: Bearer t0ken'", "-b 'flaskfleet_write_lsn=0/16B3748@1'"],
    ids=["bearer token", "read-your-writes cookie"],
)
def test_reads_with_credentials_or_a_write_cookie_skip_the_micro_cache(credentials):
    reads = api_reads(credentials)
    assert {status for _, status in reads} == {"BYPASS"}, reads
    # Each went to an upstream: both app hosts answered.
    assert {name for name, _ in reads} == set(APPS), reads


def test_too_large_body_refused():
    result = LB.run(
        "head -c 2000000 /dev/zero | curl -s -o /dev/null -w '%{http_code}' "
        "--data-binary @- http://127.0.0.1/"
    )
    assert result.stdout == "413", diagnostics()


def test_dead_upstream_is_skipped():
    APP["nginx-app1"].run("systemctl stop stub-upstream")
    try:
        seen = names_seen()
        assert "FAILED" not in seen, diagnostics()
        assert set(seen) == {"nginx-app2"}, f"{seen}\n{diagnostics()}"
    finally:
        APP["nginx-app1"].run("systemctl start stub-upstream")


def test_drained_host_taken_out_and_put_back():
    master_pid = LB.check_output("systemctl show -P MainPID nginx")
    drained = ansible_playbook(
        "-i",
        INVENTORY,
        str(SCENARIO_DIR / "converge.yml"),
        "-e",
        json.dumps({"nginx_upstream_drained": ["nginx-app2"]}),
    )
    try:
        assert drained.returncode == 0, drained.stdout[-3000:]
        upstream = LB.file("/etc/nginx/conf.d/flaskfleet.conf").content_string
        assert "down;  # nginx-app2" in upstream, upstream
        seen = names_seen()
        assert set(seen) == {"nginx-app1"}, f"{seen}\n{diagnostics()}"
    finally:
        restored = ansible_playbook("-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"))
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert set(names_seen()) == set(APPS), diagnostics()
    assert LB.check_output("systemctl show -P MainPID nginx") == master_pid, "reload, not restart"


def test_rate_limit():
    codes = LB.check_output(
        "for i in $(seq 80); do echo http://127.0.0.1/; done "
        "| xargs curl -s -o /dev/null -w '%{http_code}\\n'"
    ).split()
    assert "200" in codes
    assert "429" in codes, codes


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"nginx_upstream_port": "http"}, "nginx_upstream_port"),
        (
            {"nginx_upstream_port": 70000},
            "nginx_upstream_port, nginx_listen_port and nginx_tls_port",
        ),
        ({"nginx_tls_enabled": "maybe"}, "nginx_tls_enabled"),
        ({"nginx_client_max_body_size": "huge"}, "nginx_client_max_body_size like 1m"),
        ({"nginx_rate_limit": "fast"}, "nginx_rate_limit like 20r/s"),
        ({"nginx_micro_cache_ttl": "soon"}, "nginx_micro_cache_ttl like 1s"),
        ({"nginx_micro_cache_bypass_cookies": ["a;b"]}, "cookie names of A-Z"),
        ({"nginx_upstream_drained": ["nope"]}, "names hosts that are not in group 'app'"),
        ({}, "no upstream left in rotation"),
    ],
)
def test_bad_variables_fail_with_a_clear_message(extra_vars, message):
    result = ansible_playbook(
        "-i",
        "validation-only,",
        str(SCENARIO_DIR / "bad_vars.yml"),
        "-e",
        json.dumps(extra_vars),
        env={"ANSIBLE_INVENTORY_ENABLED": "host_list"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
