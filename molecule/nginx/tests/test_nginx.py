"""Behaviour of the nginx role: requests through the load balancer reach both
app hosts with a request id and a W3C traceparent (also logged, in a file and the
journal), stub_status answers on loopback only, a dead or drained upstream is skipped,
limits and headers hold, the ops endpoints and internal headers stay with the monitoring
network, the service is sandboxed, HTTPS is served with a certificate issued and renewed
over ACME (pebble), a deploy's drain touches the upstream file alone, and bad
variables are refused. Tests run in file order; the disruptive ones last.

In the scenario (molecule.yml) 127.0.0.1 is both the trusted load balancer in
front and the monitoring network; the load balancer's own address is a client
from outside. nginx-acme runs pebble, which resolves DOMAIN to the load balancer."""

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
PROJECT_DIR = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
APPS = ("nginx-app1", "nginx-app2")
DOMAIN = "shop.flaskfleet.test"
ACME_CA = "/usr/local/share/flaskfleet-test/acme-ca.crt"
SITE = "/etc/nginx/conf.d/flaskfleet.conf"
UPSTREAM = "/etc/nginx/flaskfleet/upstream.conf"

LB = testinfra.get_host(f"ansible://nginx-lb?ansible_inventory={INVENTORY}")
ACME = testinfra.get_host(f"ansible://nginx-acme?ansible_inventory={INVENTORY}")
APP = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in APPS}


def diagnostics():
    return (
        LB.run("journalctl -u nginx --no-pager -n 30").stdout
        + LB.run("tail -n 5 /var/log/nginx/error.log /var/log/nginx/access.log").stdout
    )


def acme_diagnostics():
    return (
        diagnostics()
        + LB.run("journalctl -u certbot --no-pager -n 30").stdout
        + LB.run("tail -n 30 /var/log/letsencrypt/letsencrypt.log").stdout
        + ACME.run("journalctl -u pebble --no-pager -n 30").stdout
    )


@functools.cache
def outside_address():
    """The load balancer's own address: curl to it from inside comes from it."""
    return next(a for a in LB.interface("eth0").addresses if "." in a)


def request(path, address="127.0.0.1", headers=()):
    """GET path from the load balancer at address: (status, {header: value}, body)."""
    options = " ".join(f"-H {shlex.quote(header)}" for header in headers)
    out = LB.check_output(f"curl -s -i -m 5 --path-as-is {options} http://{address}{path}")
    head, _, body = out.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


def statuses(*groups):
    """Status codes of one curl run that fetches each group's URLs in turn, each
    group (URLs, request headers) sent with its own headers (curl --next)."""
    parts = []
    for urls, headers in groups:
        options = " ".join(f"-H {shlex.quote(header)}" for header in headers)
        parts.append(f"-s -m 5 -w '%{{stderr}}%{{http_code}}\\n' {options} {' '.join(urls)}")
    result = LB.run("curl " + " --next ".join(parts) + " >/dev/null")
    return result.stderr.split()


def last_log_entry():
    return json.loads(LB.check_output("tail -n 1 /var/log/nginx/access.log"))


def names_seen(requests=8, url="http://127.0.0.1/"):
    """Send requests through the load balancer; return the upstream names answering."""
    result = LB.run(f"for i in $(seq {requests}); do curl -sf -m 5 {url} || echo FAILED; done")
    return result.stdout.split()


def served_certificate(*options):
    """Serial and subject alternative names of the certificate nginx serves on
    443, as openssl x509 prints them; options go to s_client."""
    return LB.check_output(
        f"openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} {' '.join(options)}"
        " </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial -fingerprint -issuer -ext subjectAltName"
    )


def handshake(protocol):
    """openssl s_client's output for one handshake limited to protocol
    (tls1_1, tls1_2, tls1_3); SECLEVEL 0 lets the client offer TLSv1.1 at all."""
    return LB.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} -{protocol}"
        " -cipher 'DEFAULT:@SECLEVEL=0' </dev/null 2>&1"
    ).stdout


def master_pid():
    return LB.check_output("systemctl show -P MainPID nginx")


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


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def echoed(headers=()):
    """One request to the stub's /echo: the headers the app host received ({name: [values]}),
    the response's headers and the access log line."""
    status, response_headers, body = request("/echo", headers=headers)
    assert status == 200, diagnostics()
    received = {name.lower(): values for name, values in json.loads(body).items()}
    return received, response_headers, last_log_entry()


@pytest.mark.parametrize(
    ("traceparent", "flags"),
    [
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-00", "00"),
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "01"),
        # A later version is read as far as version 00 goes, and sent on as 00.
        (f"cc-{TRACE_ID}-{CLIENT_SPAN}-01-later-fields", "01"),
    ],
)
def test_valid_traceparent_continues_its_trace(traceparent, flags):
    """The app gets the client's trace id and flags, with nginx's span as the parent, and the
    client's tracestate; the access log names the trace and nginx's span."""
    received, headers, entry = echoed([f"traceparent: {traceparent}", "tracestate: ff=t61rcWkgMzE"])
    (sent,) = received["traceparent"]
    version, trace_id, parent_id, sent_flags = sent.split("-")
    assert (version, trace_id, sent_flags) == ("00", TRACE_ID, flags), sent
    # nginx's span: the end of its request id, which it returns when the client sent none.
    assert parent_id == headers["x-request-id"][-16:] != CLIENT_SPAN
    assert received["tracestate"] == ["ff=t61rcWkgMzE"]
    assert (entry["request_id"], entry["trace_id"], entry["span_id"]) == (
        headers["x-request-id"],
        TRACE_ID,
        parent_id,
    )


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",
        f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",
        f"00-{TRACE_ID[:-1]}-{CLIENT_SPAN}-01",
        "garbage",
    ],
    ids=[
        "missing",
        "uppercase",
        "zero trace id",
        "zero parent id",
        "version ff",
        "00 with more",
        "short trace id",
        "garbage",
    ],
)
def test_missing_or_malformed_traceparent_starts_a_trace(traceparent):
    """Never passed on: nginx starts a sampled trace whose id is its request id, and drops the
    tracestate that belonged to the refused one."""
    sent_headers = ["tracestate: ff=stale"] + (
        [f"traceparent: {traceparent}"] if traceparent else []
    )
    received, headers, entry = echoed(sent_headers)
    request_id = headers["x-request-id"]
    assert received["traceparent"] == [f"00-{request_id}-{request_id[-16:]}-01"], received
    assert "tracestate" not in received, received
    assert (entry["trace_id"], entry["span_id"]) == (request_id, request_id[-16:])


def journal_lines_with(text):
    """nginx's journal lines holding text (a request id), waited for up to 10 s: rc 0 and the
    lines once there, rc 1 if they never come."""
    return LB.run(
        "for i in $(seq 20); do journalctl -t nginx -o cat --no-pager"
        f" | grep -F {shlex.quote(text)} && exit 0; sleep 0.5; done; exit 1"
    )


def test_access_log_line_reaches_the_journal():
    """The access log goes to the journal too (identifier nginx), whence the central log."""
    request(
        "/", headers=["X-Request-ID: ff-journal-7", f"traceparent: 00-{TRACE_ID}-{CLIENT_SPAN}-01"]
    )
    found = journal_lines_with("ff-journal-7")
    assert found.rc == 0, LB.run("journalctl -t nginx -n 5 --no-pager").stdout + diagnostics()
    entry = json.loads(found.stdout.splitlines()[-1])
    assert (entry["request_id"], entry["trace_id"]) == ("ff-journal-7", TRACE_ID)


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


def test_a_micro_cache_hit_is_logged_to_the_file_but_not_to_the_journal():
    """Hits never leave nginx: the file has them, the journal (the central log) only the request
    that went to the app for the entry."""
    miss, hit = "ff-cache-miss-" + uuid.uuid4().hex[:8], "ff-cache-hit-" + uuid.uuid4().hex[:8]
    LB.run("sleep 2.5")  # past the TTL of any earlier test's entry
    statuses = [
        request("/api/v1/products/1", headers=[f"X-Request-ID: {rid}"])[1]["x-micro-cache"]
        for rid in (miss, hit)
    ]
    assert statuses[0] in {"EXPIRED", "MISS"} and statuses[1] == "HIT", statuses
    logged = LB.check_output("tail -n 2 /var/log/nginx/access.log")
    assert [json.loads(line)["request_id"] for line in logged.splitlines()] == [miss, hit], logged
    # The miss's line reaching the journal shows the hit's had time to as well.
    found = journal_lines_with(miss)
    assert found.rc == 0, LB.run("journalctl -t nginx -n 5 --no-pager").stdout + diagnostics()
    journal = LB.check_output("journalctl -t nginx -o cat --no-pager -n 200")
    assert hit not in journal, journal


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


def test_a_client_cannot_tell_the_app_its_address():
    """nginx is the edge: X-Forwarded-For and X-Real-IP from an untrusted
    client are replaced with the address the request came from."""
    outside = outside_address()
    status, _, body = request(
        "/echo",
        outside,
        ["X-Forwarded-For: 198.51.100.9", "X-Real-IP: 198.51.100.9"],
    )
    assert status == 200, diagnostics()
    seen = {name.lower(): values for name, values in json.loads(body).items()}
    assert seen["x-forwarded-for"] == [outside], seen
    assert seen["x-real-ip"] == [outside], seen
    assert last_log_entry()["remote_addr"] == outside


def test_one_trusted_hop_names_the_client():
    """From the trusted load balancer, the last X-Forwarded-For entry is the
    client; what the client put before it never reaches the app."""
    status, _, body = request("/echo", headers=["X-Forwarded-For: 198.51.100.9, 203.0.113.7"])
    assert status == 200, diagnostics()
    seen = {name.lower(): values for name, values in json.loads(body).items()}
    assert seen["x-forwarded-for"] == ["203.0.113.7"], seen
    assert seen["x-real-ip"] == ["203.0.113.7"], seen
    assert last_log_entry()["remote_addr"] == "203.0.113.7"


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_ops_endpoints_served_to_the_monitoring_network(path):
    status, _, body = request(path)
    assert status == 200, diagnostics()
    assert body.startswith(f"{path[1:]} of nginx-app"), body


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/metric%73", "/x/../readyz"])
@pytest.mark.parametrize(
    "client",
    ["outside", "behind the trusted proxy"],
)
def test_ops_endpoints_refused_to_everyone_else(path, client):
    if client == "outside":
        status, headers, body = request(path, outside_address())
    else:
        # The trusted load balancer's own address is allowed; its client is not.
        status, headers, body = request(path, headers=["X-Forwarded-For: 203.0.113.7"])
    assert status == 403, body
    assert headers["content-type"] == "application/json", headers
    name = "/readyz" if path.endswith("readyz") else "/metrics"
    assert json.loads(body) == {
        "error": {
            "code": "forbidden",
            "message": f"{name} is served to the monitoring network only",
            "fields": {},
        }
    }
    assert "x-request-id" in headers and "x-content-type-options" in headers, headers


def test_app_healthz_stays_public():
    status, _, body = request("/healthz", outside_address())
    assert status == 200, diagnostics()
    assert body.startswith("healthz of nginx-app"), body


@pytest.mark.parametrize("path", ["/", "/api/v1/products/1", "/readyz"])
def test_internal_headers_go_to_the_monitoring_network(path):
    # Twice each: the second /api/ read is a micro-cache HIT.
    for _ in range(2):
        _, headers, _ = request(path)
        assert headers.get("x-served-by") in APPS, headers
        assert headers.get("x-app-version") == "stub-1", headers


@pytest.mark.parametrize("path", ["/", "/api/v1/products/1"])
@pytest.mark.parametrize("client", ["outside", "behind the trusted proxy"])
def test_internal_headers_hidden_from_everyone_else(path, client):
    for _ in range(2):
        if client == "outside":
            status, headers, _ = request(path, outside_address())
        else:
            status, headers, _ = request(path, headers=["X-Forwarded-For: 203.0.113.7"])
        assert status == 200, diagnostics()
        assert "x-served-by" not in headers, headers
        assert "x-app-version" not in headers, headers
        assert "x-request-id" in headers, headers


def test_too_large_body_refused():
    result = LB.run(
        "head -c 2000000 /dev/zero | curl -s -o /dev/null -w '%{http_code}' "
        "--data-binary @- http://127.0.0.1/"
    )
    assert result.stdout == "413", diagnostics()


def test_ports_opened_through_the_common_role():
    """The role hands common's firewall its flows: HTTP and HTTPS from anywhere."""
    rules = LB.check_output("nft list chain inet flaskfleet input")
    for port in (80, 443):
        assert f"ip saddr 0.0.0.0/0 tcp dport {port} accept" in rules, rules
        assert f"ip6 saddr ::/0 tcp dport {port} accept" in rules, rules
    assert LB.file("/etc/nftables.d/nginx.nft").exists


def test_stub_status_on_loopback():
    """The nginx exporter's source: counters at /stub_status, nothing else, not logged."""
    before = LB.check_output("wc -l < /var/log/nginx/access.log")
    status = LB.check_output("curl -sf -m 5 http://127.0.0.1:8081/stub_status")
    assert "Active connections:" in status, status + diagnostics()
    assert "server accepts handled requests" in status, status
    other = LB.run("curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:8081/")
    assert other.stdout == "404", other.stdout
    assert LB.check_output("wc -l < /var/log/nginx/access.log") == before


def test_stub_status_not_on_the_private_address():
    """Loopback only: the private address does not answer on the status port,
    and no firewall flow names it."""
    result = LB.run(f"curl -s -m 5 http://{outside_address()}:8081/stub_status")
    assert result.rc == 7, result.stdout  # curl: could not connect
    assert "8081" not in LB.check_output("nft list chain inet flaskfleet input")


def test_acme_certificate_issued_and_served():
    """The certificate came from the ACME server for the configured name, and a
    client that trusts that CA's root reaches the app over it."""
    certificate = served_certificate()
    assert "Pebble Intermediate CA" in certificate, certificate + acme_diagnostics()
    assert f"DNS:{DOMAIN}" in certificate, certificate
    LB.check_output(
        f"curl -sf --cacert {ACME_CA} -o /tmp/acme-root.pem https://nginx-acme:15000/roots/0"
    )
    body = LB.check_output(
        f"curl -sf -m 5 --cacert /tmp/acme-root.pem --resolve {DOMAIN}:443:127.0.0.1"
        f" https://{DOMAIN}/"
    )
    assert body.strip() in APPS, acme_diagnostics()


def test_hsts_on_https_only():
    _, headers, _ = request("/", "127.0.0.1")
    assert "strict-transport-security" not in headers, headers
    https = LB.check_output("curl -skf -D - -o /dev/null https://127.0.0.1/").lower()
    assert "strict-transport-security: max-age=31536000" in https, https


def test_https_tells_the_app_the_scheme():
    """X-Forwarded-Proto is what the client used: the app sets its cookie Secure on https."""
    for scheme in ("http", "https"):
        seen = json.loads(LB.check_output(f"curl -skf -m 5 {scheme}://127.0.0.1/echo"))
        seen = {name.lower(): values for name, values in seen.items()}
        assert seen["x-forwarded-proto"] == [scheme], seen


def test_https_speaks_http2():
    version = LB.check_output("curl -sk -o /dev/null -w '%{http_version}' https://127.0.0.1/")
    assert version == "2", version


def test_tls_1_1_refused():
    output = handshake("tls1_1")
    assert "alert protocol version" in output, output


@pytest.mark.parametrize("protocol", ["tls1_2", "tls1_3"])
def test_tls_1_2_and_1_3_accepted(protocol):
    output = handshake(protocol)
    version = "TLSv1.2" if protocol == "tls1_2" else "TLSv1.3"
    assert f"New, {version}, Cipher is" in output, output


def test_tls_sessions_are_resumed():
    LB.check_output(
        "openssl s_client -connect 127.0.0.1:443 -tls1_2 -sess_out /tmp/tls-session"
        " </dev/null >/dev/null 2>&1"
    )
    output = LB.check_output(
        "openssl s_client -connect 127.0.0.1:443 -tls1_2 -sess_in /tmp/tls-session </dev/null 2>&1"
    )
    assert "Reused, TLSv1.2" in output, output


def test_acme_challenges_served_over_http():
    """What the ACME server fetches: a token certbot wrote under the webroot,
    over plain HTTP, not proxied to the app."""
    challenge = "flaskfleet-test-challenge"
    LB.check_output(
        "install -d -m 0755 /var/www/acme/.well-known/acme-challenge"
        f" && echo {challenge}.key > /var/www/acme/.well-known/acme-challenge/{challenge}"
    )
    try:
        status, headers, body = request(
            f"/.well-known/acme-challenge/{challenge}", outside_address()
        )
        assert status == 200, diagnostics()
        assert body.strip() == f"{challenge}.key", body
        assert "x-served-by" not in headers and "x-micro-cache" not in headers, headers
        status, _, _ = request("/.well-known/acme-challenge/none", outside_address())
        assert status == 404
    finally:
        LB.run(f"rm -f /var/www/acme/.well-known/acme-challenge/{challenge}")


def test_renewal_timer_and_its_sandbox():
    timer = LB.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    report = LB.check_output("systemd-analyze security --no-pager certbot.service")
    score = float(re.search(r"Overall exposure level for certbot.service: ([0-9.]+)", report)[1])
    assert score <= 3.0, report


def test_sandbox_exposure_score():
    report = LB.check_output("systemd-analyze security --no-pager nginx.service")
    score = float(re.search(r"Overall exposure level for nginx.service: ([0-9.]+)", report)[1])
    assert score <= 3.0, report


def test_reload_keeps_the_master_under_the_sandbox():
    master_pid = LB.check_output("systemctl show -P MainPID nginx")
    result = LB.run("systemctl reload nginx")
    assert result.rc == 0, result.stderr + diagnostics()
    LB.run("sleep 1")
    assert LB.check_output("systemctl show -P MainPID nginx") == master_pid
    assert set(names_seen()) == set(APPS), diagnostics()


def test_request_bodies_spill_to_disk_under_the_sandbox():
    """Bodies above client_body_buffer_size go through /var/lib/nginx/body."""
    result = LB.check_output(
        "head -c 100000 /dev/zero | curl -sf -m 5 --data-binary @- http://127.0.0.1/upload"
    )
    assert json.loads(result) == {"received": 100000}, diagnostics()


def test_logs_reopen_after_rotation_under_the_sandbox():
    """What logrotate does (create 0640 www-data adm, then USR1) still works."""
    LB.check_output(
        "mv /var/log/nginx/access.log /var/log/nginx/access.log.1"
        " && install -o www-data -g adm -m 0640 /dev/null /var/log/nginx/access.log"
        " && systemctl kill -s USR1 --kill-whom=main nginx && sleep 1"
    )
    request("/", headers=["X-Request-ID: after-rotation"])
    assert last_log_entry()["request_id"] == "after-rotation", diagnostics()


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
        upstream = LB.file(UPSTREAM).content_string
        assert "down;  # nginx-app2" in upstream, upstream
        seen = names_seen()
        assert set(seen) == {"nginx-app1"}, f"{seen}\n{diagnostics()}"
    finally:
        restored = ansible_playbook("-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"))
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert set(names_seen()) == set(APPS), diagnostics()
    assert LB.check_output("systemctl show -P MainPID nginx") == master_pid, "reload, not restart"


def assert_each_client_has_its_own_bucket(busy, other):
    """busy and other are two clients, each (URL, request headers). After 100 back-to-back
    requests the busy one is over its limit (429); then, five times, one request of the other's
    is served while two back-to-back of the busy one's right after it are refused at least once
    (its bucket regains a request per 1/rate while the other's is served)."""
    (busy_url, busy_headers), (other_url, other_headers) = busy, other
    groups = [([busy_url] * 100, busy_headers)]
    for _ in range(5):
        groups += [([other_url], other_headers), ([busy_url] * 2, busy_headers)]
    codes = statuses(*groups)
    assert "429" in codes[:100], codes
    assert codes[100::3] == ["200"] * 5, codes
    assert "429" in codes[101::3] + codes[102::3], codes


def test_rate_limit_is_per_client_address():
    """One address over its limit gets 429 while another is still served."""
    assert_each_client_has_its_own_bucket(
        ("http://127.0.0.1/", []), (f"http://{outside_address()}/", [])
    )


def test_rate_limit_is_per_client_behind_the_trusted_proxy():
    """Behind the trusted load balancer each client has its own bucket, not the
    load balancer's address."""
    LB.run("sleep 3")  # the previous test's buckets refill
    url = "http://127.0.0.1/"
    assert_each_client_has_its_own_bucket(
        (url, ["X-Forwarded-For: 203.0.113.7"]), (url, ["X-Forwarded-For: 203.0.113.8"])
    )


def test_renewal_serves_the_new_certificate_after_a_reload():
    """certbot.service, as certbot.timer starts it (its sandbox, its CA), renews
    through nginx's webroot; its deploy hook checks the configuration and
    reloads: nginx serves the new certificate from the same master."""
    before, pid = served_certificate(), master_pid()
    # A runtime drop-in forces this one renewal (the certificate is years from expiry).
    LB.check_output(
        "mkdir -p /run/systemd/system/certbot.service.d && printf '%s\\n' '[Service]'"
        " 'ExecStart=' 'ExecStart=/usr/bin/certbot -q renew --force-renewal"
        " --no-random-sleep-on-renew' > /run/systemd/system/certbot.service.d/force.conf"
        " && systemctl daemon-reload"
    )
    try:
        result = LB.run("systemctl start certbot.service")
    finally:
        LB.run("rm -r /run/systemd/system/certbot.service.d && systemctl daemon-reload")
    assert result.rc == 0, result.stderr + acme_diagnostics()
    after = served_certificate()
    assert after.splitlines()[0] != before.splitlines()[0], f"{before}\n{after}"
    assert "Pebble Intermediate CA" in after and f"DNS:{DOMAIN}" in after, after
    assert master_pid() == pid, "reload, not restart"
    log = LB.check_output("cat /var/log/letsencrypt/letsencrypt.log")
    hook = "/etc/letsencrypt/renewal-hooks/deploy/flaskfleet-nginx"
    assert f"Running deploy-hook command: {hook}" in log, log[-3000:]
    assert set(names_seen(url="-k https://127.0.0.1/")) == set(APPS), diagnostics()


def test_http_redirects_to_https_but_for_acme_and_health():
    pid = master_pid()
    redirected = ansible_playbook(
        "-i",
        INVENTORY,
        str(SCENARIO_DIR / "converge.yml"),
        "-e",
        json.dumps({"nginx_tls_redirect_http": True}),
    )
    try:
        assert redirected.returncode == 0, redirected.stdout[-3000:]
        status, headers, _ = request("/api/v1/products/1?x=1", headers=[f"Host: {DOMAIN}"])
        assert status == 301, headers
        assert headers["location"] == f"https://{DOMAIN}/api/v1/products/1?x=1", headers
        assert request("/nginx-health")[0] == 200
        status, _, _ = request("/.well-known/acme-challenge/none")
        assert status == 404, "the challenge path is answered, not redirected"
        https = LB.check_output(f"curl -skf --resolve {DOMAIN}:443:127.0.0.1 https://{DOMAIN}/")
        assert https.strip() in APPS
    finally:
        restored = ansible_playbook("-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"))
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert request("/")[0] == 200, diagnostics()
    assert master_pid() == pid, "reload, not restart"


def test_deploy_drain_renders_the_upstream_file_alone():
    """deploy.yml's drain: the upstream entry point, run with an app host's
    variables plus site settings of its own, changes the upstream file only."""
    site_before, upstream_before = LB.file(SITE).sha256sum, LB.file(UPSTREAM).content_string
    site_settings = {
        "nginx_server_name": "elsewhere.example.com",
        "nginx_security_headers": {"X-Drain-Test": "1"},
        "nginx_tls_enabled": False,
        "nginx_acme_enabled": False,
    }
    drained = ansible_playbook(
        "-i",
        INVENTORY,
        str(SCENARIO_DIR / "drain.yml"),
        "-e",
        json.dumps({**site_settings, "nginx_upstream_drained": ["nginx-app2"]}),
    )
    try:
        assert drained.returncode == 0, drained.stdout[-3000:]
        assert LB.file(SITE).sha256sum == site_before, "the site was re-rendered"
        upstream = LB.file(UPSTREAM).content_string
        assert upstream != upstream_before
        assert "down;  # nginx-app2" in upstream, upstream
        assert set(names_seen()) == {"nginx-app1"}, diagnostics()
        assert set(names_seen(url="-k https://127.0.0.1/")) == {"nginx-app1"}, diagnostics()
        https = LB.check_output("curl -skf -D - -o /dev/null https://127.0.0.1/").lower()
        assert "strict-transport-security" in https and "x-drain-test" not in https, https
    finally:
        restored = ansible_playbook(
            "-i",
            INVENTORY,
            str(SCENARIO_DIR / "drain.yml"),
            "-e",
            json.dumps({**site_settings, "nginx_upstream_drained": []}),
        )
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert LB.file(UPSTREAM).content_string == upstream_before
    assert LB.file(SITE).sha256sum == site_before
    assert set(names_seen()) == set(APPS), diagnostics()


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        (
            {
                "nginx_acme_enabled": False,
                "nginx_tls_self_signed": False,
                "nginx_tls_certificate": "/etc/nginx/tls/missing.crt",
            },
            "nginx_tls_certificate (/etc/nginx/tls/missing.crt) and nginx_tls_certificate_key",
        ),
        (
            {
                "nginx_acme_enabled": False,
                "nginx_tls_self_signed": False,
                "nginx_tls_certificate": "/etc/hostname",
                "nginx_tls_certificate_key": "/etc/hostname",
            },
            "must be a readable PEM certificate and its unencrypted private key",
        ),
        (
            {"nginx_acme_ca_bundle": "/etc/missing-ca.crt"},
            "nginx_acme_ca_bundle (/etc/missing-ca.crt) must be a readable PEM CA",
        ),
    ],
    ids=["missing certificate", "not a certificate", "missing ACME CA file"],
)
def test_bad_files_fail_before_any_change(extra_vars, message):
    """Checked on the load balancer before the role changes anything there."""
    site_before = LB.file(SITE).sha256sum
    result = ansible_playbook(
        "-i", INVENTORY, str(SCENARIO_DIR / "converge.yml"), "-e", json.dumps(extra_vars)
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert message in output, output
    assert re.search(r"nginx-lb\s*: ok=\d+\s+changed=0\s", output), output
    assert LB.file(SITE).sha256sum == site_before


def test_argument_specs_defaults_match_defaults_main():
    role = PROJECT_DIR / "ansible/roles/nginx"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"][
        "main"
    ]["options"]
    assert set(options) == set(defaults)
    for name, spec in options.items():
        assert spec.get("description"), name
        assert spec.get("default") == defaults[name], name


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"nginx_upstream_port": "http"}, "nginx_upstream_port"),
        ({"nginx_upstream_port": 70000}, "need nginx_upstream_port in 1..65535"),
        ({"nginx_listen_port": 0}, "need nginx_listen_port and nginx_tls_port in 1..65535"),
        ({"nginx_status_port": 80}, "nginx_status_port in 1..65535 and apart from both"),
        ({"nginx_tls_enabled": "maybe"}, "nginx_tls_enabled"),
        ({"nginx_client_max_body_size": "huge"}, "nginx_client_max_body_size like 1m"),
        ({"nginx_rate_limit": "fast"}, "nginx_rate_limit like 20r/s"),
        ({"nginx_micro_cache_ttl": "soon"}, "nginx_micro_cache_ttl like 1s"),
        ({"nginx_micro_cache_bypass_cookies": ["a;b"]}, "cookie names of A-Z"),
        ({"nginx_trusted_proxies": ["10.0.0.0/33"]}, "not valid: ['10.0.0.0/33']"),
        ({"nginx_trusted_proxies": ["10.0.0.1/8"]}, "nginx_trusted_proxies must list"),
        ({"nginx_ops_allowed_cidrs": ["monitoring"]}, "not valid: ['monitoring']"),
        (
            {"nginx_ops_allowed_cidrs": ["10.0.9.0/24", "2001:db8::/129"]},
            "nginx_ops_allowed_cidrs must list",
        ),
        ({"nginx_ops_paths": ["metrics"]}, "nginx_ops_paths paths like /metrics"),
        ({"nginx_ops_only_headers": ["X-Served-By: 1"]}, "nginx_ops_only_headers"),
        ({"nginx_upstream_drained": ["nope"]}, "names hosts that are not in group 'app'"),
        ({}, "no upstream left in rotation"),
        ({"nginx_acme_enabled": True}, "nginx_acme_enabled needs nginx_tls_enabled: true"),
        ({"nginx_tls_redirect_http": "false"}, "nginx_tls_redirect_http must be a boolean"),
        (
            {"nginx_acme_enabled": True, "nginx_tls_enabled": True},
            "nginx_acme_domains must list the certificate's hostnames",
        ),
        (
            {
                "nginx_acme_enabled": True,
                "nginx_tls_enabled": True,
                "nginx_acme_domains": ["shop.example.com", "https://shop.example.com"],
            },
            "not valid: ['https://shop.example.com']",
        ),
        (
            {
                "nginx_acme_enabled": True,
                "nginx_tls_enabled": True,
                "nginx_acme_domains": ["*.example.com"],
            },
            "not valid: ['*.example.com']",
        ),
        (
            {
                "nginx_acme_enabled": True,
                "nginx_tls_enabled": True,
                "nginx_acme_domains": ["shop.example.com"],
            },
            "nginx_acme_email must be the ACME account's contact",
        ),
        (
            {
                "nginx_acme_enabled": True,
                "nginx_tls_enabled": True,
                "nginx_acme_domains": ["shop.example.com"],
                "nginx_acme_email": "ops@example.com",
                "nginx_acme_directory_url": "http://acme.example.com/directory",
            },
            "nginx_acme_directory_url an https:// URL",
        ),
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
