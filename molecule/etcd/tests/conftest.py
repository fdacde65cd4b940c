"""The etcd scenario's hosts and etcdctl on them, with the shared test library
(molecule/_shared/testlib.py)."""

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import (
    eventually,
    exposure,
    fails_in_validation_on,
    host,
    journal,
    private_ip,
    run_playbook,
)

__all__ = [
    "eventually",
    "exposure",
    "fails_in_validation_on",
    "host",
    "journal",
    "private_ip",
    "run_playbook",
]

SCENARIO_DIR = Path(__file__).resolve().parent.parent
MEMBER_NAMES = ["etcd-1", "etcd-2", "etcd-3"]
MEMBERS = {name: host(name) for name in MEMBER_NAMES}
OUTSIDER = host("etcd-outsider")
CLIENT_PORT = 2379
PEER_PORT = 2380
CA_FILE = "/etc/flaskfleet/tls/ca.crt"
CERTIFICATE_FILE = "/etc/flaskfleet/tls/etcd.crt"
KEY_FILE = "/etc/flaskfleet/tls/etcd.key"
MEMBER_TLS = f"--cacert={CA_FILE} --cert={CERTIFICATE_FILE} --key={KEY_FILE}"


def diagnostics() -> str:
    """Every member's etcd journal, for assertion messages."""
    return "".join(journal(target, "etcd", lines=20) for target in MEMBERS.values())


def client_url(name: str) -> str:
    return f"https://{private_ip(MEMBERS[name])}:{CLIENT_PORT}"


def etcdctl(target, *args: str, endpoint: str, tls: str = MEMBER_TLS):
    """etcdctl (v3 API) on target against one endpoint; a CommandResult."""
    command = " ".join(shlex.quote(arg) for arg in args)
    return target.run(
        f"ETCDCTL_API=3 etcdctl --endpoints={endpoint} {tls} --dial-timeout=3s"
        f" --command-timeout=5s {command}"
    )
