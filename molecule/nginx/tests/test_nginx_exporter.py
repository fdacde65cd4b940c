"""Behaviour of the exporters role's nginx exporter beside nginx: it answers on the private
address only and reports what nginx's loopback stub_status counts (nginx_up 1, connections
accepted as requests arrive); a sandboxed unit."""

import os
import re
import sys
from pathlib import Path

import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import eventually, exposure, journal, private_ip

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
LB = testinfra.get_host(f"ansible://nginx-lb?ansible_inventory={INVENTORY}")
UNIT = "prometheus-nginx-exporter"
PORT = 9113
MAX_EXPOSURE = 3.0


def metrics():
    """The exporter's /metrics as the monitor would scrape it: on the private address."""
    return LB.check_output(f"curl -sS --max-time 10 http://{private_ip(LB)}:{PORT}/metrics")


def value(text, name):
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_exporter_listens_only_on_the_private_address():
    listeners = {
        socket.rsplit(":", 1)[0]
        for socket in LB.check_output("ss -Htln").split()
        if socket.endswith(f":{PORT}")
    }
    assert listeners == {private_ip(LB)}, listeners


def test_exporter_reports_nginx_up_and_counts_connections():
    before = metrics()
    assert value(before, "nginx_up") == 1.0, before[-2000:] + journal(LB, UNIT)
    accepted = value(before, "nginx_connections_accepted")
    assert accepted is not None, before[-2000:]
    for _ in range(3):
        LB.run("curl -s -o /dev/null -m 5 http://127.0.0.1/")
    assert eventually(lambda: value(metrics(), "nginx_connections_accepted") >= accepted + 3)


def test_exporter_sandbox_rates_safe():
    assert exposure(LB, f"{UNIT}.service") <= MAX_EXPOSURE
