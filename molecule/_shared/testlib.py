"""What every scenario's tests need, written once (autobase keeps one test tree the same way).
A scenario's tests/conftest.py puts this directory on sys.path and imports from here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[2]))
SHARED_DIR = Path(__file__).resolve().parent
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def host(name: str):
    """A scenario platform as a testinfra host."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


def private_ip(target) -> str:
    """The host's address on the scenario network: it stands in for the VM's private_ip."""
    return target.check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")


def write_private_file(target, path: str, content: str) -> None:
    """Write a file only root can read on a scenario container, its content on stdin: a secret
    in a command, even inside `sh -c`, shows in the host's and the container's process lists."""
    subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            target.backend.host,
            "sh",
            "-c",
            'umask 077 && cat > "$1"',
            "sh",
            path,
        ],
        input=content,
        text=True,
        check=True,
        timeout=60,
    )


def journal(target, *units: str, lines: int = 40) -> str:
    """The units' journal, for assertion messages."""
    flags = " ".join(f"-u {unit}" for unit in units)
    output = target.run(f"journalctl {flags} --no-pager -n {lines}").stdout
    return f"\n--- journalctl {flags}:\n{output}"


def eventually(check, timeout: float = 30.0, interval: float = 1.0):
    """Call check() until it returns something truthy or timeout seconds pass; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def run_playbook(playbook: Path | str, *extra_vars: str, timeout: int = 900) -> tuple[int, str]:
    """ansible-playbook on the scenario's inventory with -e arguments: (exit code, output)."""
    args = [ANSIBLE_PLAYBOOK, "-i", INVENTORY, str(playbook)]
    for extra in extra_vars:
        args += ["-e", extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    return result.returncode, result.stdout + result.stderr


def run_role_with(role: str, extra_vars: dict) -> subprocess.CompletedProcess:
    """The role on a host that does not exist, with extra_vars: it must fail in validation."""
    return subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            *("-i", "validation-only,"),
            str(SHARED_DIR / "validate_role.yml"),
            *("-e", json.dumps({"role_under_test": role, **extra_vars})),
        ],
        cwd=PROJECT_DIR,
        env={**os.environ, "ANSIBLE_INVENTORY_ENABLED": "host_list"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fails_in_validation(role: str, extra_vars: dict, message: str) -> str:
    """The role with extra_vars stops with `message` before any task reaches a host (its
    validation runs on the controller); returns the run's output."""
    result = run_role_with(role, extra_vars)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert "UNREACHABLE" not in output, output
    return output


def fails_in_validation_on(limit: str, role: str, extra_vars: dict, message: str) -> str:
    """As fails_in_validation, for a role whose checks read the inventory's groups: the role runs
    on the scenario inventory's hosts that `limit` selects, each made unreachable by
    validate_role.yml, so it must stop in validation; returns the run's output."""
    result = subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            *("-i", INVENTORY, "--limit", limit),
            str(SHARED_DIR / "validate_role.yml"),
            *("-e", json.dumps({"role_under_test": role, **extra_vars})),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert "UNREACHABLE" not in output, output
    return output


def changed_nothing(output: str) -> bool:
    """Whether a playbook's recap shows no change on any host."""
    return set(re.findall(r"changed=(\d+)", output)) <= {"0"}


def exposure(target, unit: str) -> float:
    """systemd-analyze security's overall exposure of a unit (0 best, 10 worst)."""
    output = target.check_output(f"systemd-analyze security --no-pager {unit}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))
