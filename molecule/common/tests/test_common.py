"""Behaviour of the common role: sshd refuses root and passwords, the firewall
drops what the inventory does not allow, and bad variables stop the role."""

import pytest
from conftest import eventually, host, journal, private_ip, run_role_with

APP = host("common-app")
LB = host("common-lb")

SSH = (
    "ssh -i /root/.ssh/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=no "
    "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"
)


def firewall_state(target):
    return target.run("nft list ruleset").stdout + journal(target, "nftables")


def tcp_probe(client, address, port):
    """Return code of a TCP connect: 0 connected, 124 timed out (dropped), 1 refused."""
    return client.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}'").rc


@pytest.fixture(scope="module")
def listeners():
    """Listeners on common-app: 8000 is allowed from the lb group, 9999 from nobody."""
    for port in (8000, 9999):
        APP.run(
            f"systemctl is-active --quiet probe-{port} || "
            f"systemd-run --unit probe-{port} python3 -m http.server {port} --directory /tmp"
        )
    # A busy machine takes a moment to start Python: wait until both answer locally.
    for port in (8000, 9999):
        url = f"http://127.0.0.1:{port}/"
        assert eventually(lambda url=url: APP.run(f"curl -sf -m 3 -o /dev/null {url}").rc == 0), (
            journal(APP, f"probe-{port}")
        )
    yield private_ip(APP)
    for port in (8000, 9999):
        APP.run(f"systemctl stop probe-{port}")


def test_sshd_effective_settings():
    settings = APP.check_output("sshd -T")
    assert "permitrootlogin no" in settings
    assert "passwordauthentication no" in settings
    assert "kbdinteractiveauthentication no" in settings


def test_root_login_refused_even_with_an_authorized_key():
    result = LB.run(f"{SSH} root@{private_ip(APP)} true")
    assert result.rc == 255, result.stdout + result.stderr
    assert "Permission denied" in result.stderr, result.stderr + journal(APP, "ssh")


def test_deploy_user_logs_in_with_its_key_and_has_sudo():
    result = LB.run(f"{SSH} deploy@{private_ip(APP)} sudo -n id -u")
    assert result.rc == 0, result.stderr + journal(APP, "ssh")
    assert result.stdout.strip() == "0"


def test_password_authentication_not_offered():
    result = LB.run(
        f"{SSH} -o PubkeyAuthentication=no "
        f"-o PreferredAuthentications=password,keyboard-interactive deploy@{private_ip(APP)} true"
    )
    assert result.rc == 255
    assert "Permission denied (publickey)" in result.stderr, result.stderr + journal(APP, "ssh")


def test_firewall_allows_flow_from_allowed_group(listeners):
    assert LB.run(f"curl -sf -m 3 -o /dev/null http://{listeners}:8000/").rc == 0, firewall_state(
        APP
    )


def test_firewall_drops_port_nobody_is_allowed(listeners):
    assert tcp_probe(LB, listeners, 9999) == 124, firewall_state(APP)


def test_firewall_drops_ssh_from_outside_admin_cidrs():
    # common-app is not in common_admin_cidrs, so common-lb's sshd is out of its reach.
    assert tcp_probe(APP, private_ip(LB), 22) == 124, firewall_state(LB)
    assert tcp_probe(LB, private_ip(APP), 22) == 0, firewall_state(APP)


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"common_ssh_port": "twenty-two"}, "common_ssh_port"),
        ({"common_ssh_port": 70000}, "common_ssh_port in 1..65535"),
        ({"common_admin_cidrs": ["10.0.0.1"]}, "address/prefix"),
        ({"common_firewall_extra_flows": [{"name": "x", "to": "app"}]}, "port"),
        (
            {"common_firewall_extra_flows": [{"name": "big", "to": "app", "port": 99999}]},
            "firewall flow 'big' of common needs a port in 1..65535",
        ),
    ],
)
def test_bad_variables_fail_with_a_clear_message(extra_vars, message):
    result = run_role_with("common", extra_vars)
    assert result.returncode != 0, result.stdout
    assert message in result.stdout + result.stderr, result.stdout + result.stderr
