"""Fixtures for the app scenario: the app host, HTTP against it, and running the deploy playbook."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import ANSIBLE_PLAYBOOK, INVENTORY, eventually, host, journal

__all__ = ["eventually"]
SCENARIO_DIR = Path(__file__).resolve().parent.parent
PORT = 8000


@pytest.fixture(scope="session")
def app():
    return host("app-app1")


@pytest.fixture(scope="session")
def address(app):
    """The app host's private address: the one the socket unit listens on."""
    return app.interface("eth0").addresses[0]


def diagnostics(target):
    """The units' journal, for assertion messages."""
    return journal(target, "flaskfleet.service", "flaskfleet.socket", lines=60)


def http_get(host, url, max_time=5):
    """GET url from the host itself; returns (status, headers with lower-case names, body)."""
    result = host.run(f"curl -sS --max-time {max_time} --include {url}")
    if result.rc != 0:
        return 0, {}, result.stderr
    head, _, body = result.stdout.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def main_pid(host):
    return int(host.check_output("systemctl show --property=MainPID --value flaskfleet.service"))


def worker_pids(host):
    return set(host.check_output(f"pgrep -P {main_pid(host)} || true").split())


def build_release(name):
    """`make release RELEASE=name`: the archive's path (cached when the sources did not change)."""
    result = subprocess.run(
        ["bash", "scripts/release.sh", name],
        cwd=os.environ["MOLECULE_PROJECT_DIRECTORY"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def run_deploy(*extra_vars):
    """Run the scenario's deploy playbook (the app role) with -e arguments; (exit code, output).

    With Molecule's whole inventory directory, as Molecule runs converge: the groups without hosts
    that the roles' firewall flows name (molecule.yml) are in its hosts file, not in the
    ansible_inventory.yml that MOLECULE_INVENTORY_FILE names."""
    args = [ANSIBLE_PLAYBOOK, "-i", str(Path(INVENTORY).parent), str(SCENARIO_DIR / "deploy.yml")]
    for extra in extra_vars:
        args += ["-e", extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    return result.returncode, result.stdout + result.stderr
