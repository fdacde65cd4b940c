"""The shared test library (molecule/_shared/testlib.py) for this scenario's tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import (
    PROJECT_DIR,
    eventually,
    exposure,
    fails_in_validation,
    host,
    journal,
    private_ip,
    run_playbook,
)

__all__ = [
    "PROJECT_DIR",
    "eventually",
    "exposure",
    "fails_in_validation",
    "host",
    "journal",
    "private_ip",
    "run_playbook",
]
