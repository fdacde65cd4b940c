"""Behaviour of the etcd role: three members (the database VMs and the monitor) in one healthy
cluster, the package's default member never among them; mutual TLS on both ports (no certificate,
another CA's certificate or plain HTTP refused); a key written through one member read through
another; writes go on with one member down, and the member rejoins with its data; a renewed
certificate served without a restart, a changed setting applied by restarts that keep the data;
the firewall admits members and clients only; a sandboxed unit; bad variables refused before any
change."""

import json
import secrets

import pytest
from conftest import (
    CA_FILE,
    CERTIFICATE_FILE,
    CLIENT_PORT,
    KEY_FILE,
    MEMBER_NAMES,
    MEMBERS,
    OUTSIDER,
    PEER_PORT,
    SCENARIO_DIR,
    client_url,
    diagnostics,
    etcdctl,
    eventually,
    exposure,
    fails_in_validation_on,
    private_ip,
    run_playbook,
)

MAX_EXPOSURE = 3.0
VALID = {"private_ip": "127.0.0.1"}


def put(name: str, key: str, value: str, reader: str | None = None):
    """Write key through member `name` (etcdctl on host `reader`, default the same)."""
    result = etcdctl(MEMBERS[reader or name], "put", key, value, endpoint=client_url(name))
    assert result.rc == 0 and result.stdout.strip() == "OK", result.stderr + diagnostics()


def get(name: str, key: str, *flags: str, on: str | None = None) -> str:
    """The value of key read through member `name` (etcdctl on host `on`, default the same)."""
    result = etcdctl(
        MEMBERS[on or name], "get", key, "--print-value-only", *flags, endpoint=client_url(name)
    )
    assert result.rc == 0, result.stderr + diagnostics()
    return result.stdout.strip()


def members(name: str = "etcd-1") -> list[dict]:
    result = etcdctl(MEMBERS[name], "member", "list", "--write-out=json", endpoint=client_url(name))
    assert result.rc == 0, result.stderr + diagnostics()
    return json.loads(result.stdout)["members"]


def health(name: str = "etcd-1"):
    """`endpoint health --cluster` through member `name`: (exit code, [{endpoint, health}])."""
    result = etcdctl(
        MEMBERS[name], "endpoint", "health", "--cluster", "--write-out=json",
        endpoint=client_url(name),
    )  # fmt: skip
    return result.rc, json.loads(result.stdout or "[]")


def all_healthy() -> bool:
    code, endpoints = health()
    return code == 0 and len(endpoints) == 3 and all(entry["health"] for entry in endpoints)


def main_pid(name: str) -> str:
    return MEMBERS[name].check_output("systemctl show -P MainPID etcd")


def test_cluster_has_the_three_inventory_members_all_healthy():
    assert all_healthy(), (*health(), diagnostics())
    listed = members()
    assert sorted(member["name"] for member in listed) == MEMBER_NAMES, listed
    for member in listed:
        address = private_ip(MEMBERS[member["name"]])
        assert member["peerURLs"] == [f"https://{address}:{PEER_PORT}"], member
        assert member["clientURLs"] == [f"https://{address}:{CLIENT_PORT}"], member


@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_package_default_member_never_ran_and_only_the_private_address_listens(name):
    target = MEMBERS[name]
    # The package's postinst would have made /var/lib/etcd/default on its first start.
    assert target.check_output("ls /var/lib/etcd") == "flaskfleet"
    listeners = sorted(
        target.check_output(
            "ss -Htln '( sport = :2379 or sport = :2380 )' | awk '{print $4}'"
        ).split()
    )
    address = private_ip(target)
    assert listeners == [f"{address}:{CLIENT_PORT}", f"{address}:{PEER_PORT}"], listeners


def test_key_written_through_one_member_is_read_through_another():
    key, value = f"/test/{secrets.token_hex(4)}", secrets.token_hex(8)
    put("etcd-1", key, value)
    # Read from a third host through the second member.
    assert get("etcd-2", key, on="etcd-3") == value


def test_client_without_a_certificate_is_refused():
    key = f"/test/{secrets.token_hex(4)}"
    target = MEMBERS["etcd-1"]
    no_certificate = f"--cacert={CA_FILE}"
    result = etcdctl(target, "put", key, "x", endpoint=client_url("etcd-2"), tls=no_certificate)
    assert result.rc != 0 and "OK" not in result.stdout, result.stdout + result.stderr
    version = target.run(f"curl -sS --max-time 5 --cacert {CA_FILE} {client_url('etcd-2')}/version")
    assert version.rc != 0 and "etcdserver" not in version.stdout, version.stdout
    assert get("etcd-2", key) == ""


def test_client_certificate_from_another_ca_is_refused():
    target = MEMBERS["etcd-1"]
    target.check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
        " -subj /CN=intruder -addext extendedKeyUsage=clientAuth"
        " -keyout /root/intruder.key -out /root/intruder.crt 2>/dev/null"
    )
    tls = f"--cacert={CA_FILE} --cert=/root/intruder.crt --key=/root/intruder.key"
    key = f"/test/{secrets.token_hex(4)}"
    result = etcdctl(target, "put", key, "x", endpoint=client_url("etcd-2"), tls=tls)
    assert result.rc != 0 and "OK" not in result.stdout, result.stdout + result.stderr
    assert get("etcd-2", key) == ""


def test_plain_http_is_refused():
    target, key = MEMBERS["etcd-1"], f"/test/{secrets.token_hex(4)}"
    url = f"http://{private_ip(MEMBERS['etcd-2'])}:{CLIENT_PORT}"
    version = target.run(f"curl -sS --max-time 5 {url}/version")
    assert "etcdserver" not in version.stdout, version.stdout
    encoded = target.check_output(f"printf %s {key} | base64")
    write = target.run(
        f"""curl -sS --max-time 5 {url}/v3/kv/put -d '{{"key": "{encoded}", "value": "eA=="}}'"""
    )
    assert "revision" not in write.stdout, write.stdout
    assert get("etcd-2", key) == ""


def tcp_probe(source, target, port: int) -> int:
    """0 if source connects to target's port, 124 if the connection times out (dropped)."""
    return source.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{private_ip(target)}/{port}'").rc


@pytest.mark.parametrize("port", [CLIENT_PORT, PEER_PORT])
def test_firewall_admits_members_and_keeps_others_out(port):
    rules = MEMBERS["etcd-1"].run("nft list ruleset").stdout
    # The monitor is a member but not in a client group: it reaches both ports as a member.
    assert tcp_probe(MEMBERS["etcd-3"], MEMBERS["etcd-1"], port) == 0, rules
    assert tcp_probe(MEMBERS["etcd-1"], MEMBERS["etcd-3"], port) == 0, rules
    assert tcp_probe(OUTSIDER, MEMBERS["etcd-1"], port) == 124, rules


@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_unit_is_sandboxed(name):
    assert exposure(MEMBERS[name], "etcd.service") <= MAX_EXPOSURE
    assert MEMBERS[name].check_output("ps -o user= -C etcd") == "etcd"


def test_writes_go_on_with_one_member_down_and_it_rejoins_with_its_data():
    stopped = MEMBERS["etcd-3"]
    member_id = next(member["ID"] for member in members() if member["name"] == "etcd-3")
    key, value = f"/test/{secrets.token_hex(4)}", secrets.token_hex(8)
    stopped.check_output("systemctl stop etcd")
    try:
        put("etcd-1", key, value)
        assert get("etcd-2", key) == value
        code, endpoints = health()
        assert code != 0 and sum(entry["health"] for entry in endpoints) == 2, endpoints
    finally:
        # Type=notify: returns once the member is back in the cluster.
        start = stopped.run("systemctl start etcd")
    assert start.rc == 0, start.stderr + diagnostics()
    # Serializable: answered from the member's own copy of the data.
    assert eventually(lambda: get("etcd-3", key, "--consistency=s") == value, timeout=20)
    assert next(member["ID"] for member in members() if member["name"] == "etcd-3") == member_id
    assert eventually(all_healthy, timeout=30), diagnostics()


def converge(*extra_vars: str) -> str:
    """The scenario's converge playbook with -e arguments; its output."""
    code, output = run_playbook(SCENARIO_DIR / "converge.yml", *extra_vars)
    assert code == 0, output[-3000:] + diagnostics()
    return output


def served_serial(name: str) -> str:
    address = private_ip(MEMBERS[name])
    return MEMBERS[name].check_output(
        f"openssl s_client -connect {address}:{CLIENT_PORT} -CAfile {CA_FILE}"
        f" -cert {CERTIFICATE_FILE} -key {KEY_FILE} -verify_return_error </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )


def test_renewed_certificate_is_served_without_a_restart():
    pids = {name: main_pid(name) for name in MEMBER_NAMES}
    serials = {name: served_serial(name) for name in MEMBER_NAMES}
    converge("pki_rotate=true")
    for name in MEMBER_NAMES:
        assert served_serial(name) not in ("", serials[name]), name
        assert main_pid(name) == pids[name], diagnostics()
    assert all_healthy(), diagnostics()
    put("etcd-1", "/test/after-rotation", "ok", reader="etcd-2")


def test_changed_setting_restarts_every_member_and_keeps_the_data():
    key, value = f"/test/{secrets.token_hex(4)}", secrets.token_hex(8)
    put("etcd-1", key, value)
    pids = {name: main_pid(name) for name in MEMBER_NAMES}
    try:
        output = converge(json.dumps({"etcd_election_timeout_ms": 1500}))
        assert "RUNNING HANDLER [etcd : Restart etcd]" in output, output[-3000:]
        for name in MEMBER_NAMES:
            assert main_pid(name) != pids[name], name
            assert "ETCD_ELECTION_TIMEOUT=1500" in MEMBERS[name].check_output(
                "tr '\\0' '\\n' < /proc/$(systemctl show -P MainPID etcd)/environ"
            )
            assert get(name, key) == value
    finally:
        converge()


@pytest.mark.parametrize(
    ("limit", "extra_vars", "message"),
    [
        (
            "etcd-1",
            {"etcd_member_groups": ["postgres"]},
            "must hold an odd number of hosts, 3 or more where the cluster must outlive a lost"
            " member (they hold 2",
        ),
        ("etcd-outsider", {}, "etcd-outsider is in none of the groups ['postgres', 'monitor']"),
        ("etcd-1", {"etcd_peer_port": 2379}, "two different ports in 1..65535 (got 2379 and 2379)"),
        (
            "etcd-1",
            {"etcd_heartbeat_interval_ms": 100, "etcd_election_timeout_ms": 400},
            "etcd_election_timeout_ms must be at least 5 x etcd_heartbeat_interval_ms (500)",
        ),
        ("etcd-1", {"etcd_cluster_name": "default"}, "etcd_cluster_name must match"),
        (
            "etcd-1",
            {"etcd_client_groups": ["patroni"]},
            "etcd_client_groups names groups the inventory lacks: ['patroni']",
        ),
        ("etcd-1", {"etcd_listen_address": "db.internal"}, "etcd_listen_address must be an IPv4"),
        (
            "etcd-1",
            {"etcd_tls_key_file": "/etc/flaskfleet/tls/ca.crt"},
            "must be three different files",
        ),
    ],
    ids=[
        "even-member-count",
        "host-not-a-member",
        "same-ports",
        "election-under-5-heartbeats",
        "cluster-named-default",
        "missing-client-group",
        "listen-address-a-name",
        "key-is-the-ca",
    ],
)
def test_bad_variables_fail_in_validation(limit, extra_vars, message):
    fails_in_validation_on(limit, "etcd", {**VALID, **extra_vars}, message)
