"""deploy.yml's canary judgement (tasks/deploy-canary-judge.yml) on made-up /metrics counters: run
with ansible-playbook on this machine, as deploy.yml runs it on the canary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
JUDGEMENT = ROOT / "tasks" / "deploy-canary-judge.yml"
SETTINGS = {
    "deploy_canary_seconds": 30,
    "deploy_canary_min_requests": 20,
    "deploy_canary_max_error_ratio_increase": 0.02,
    "deploy_canary_max_latency_ratio": 2.0,
    "deploy_canary_latency_slack_seconds": 0.05,
}


def metrics(reads: int, orders: int, order_errors: int, seconds: float) -> str:
    """A node's /metrics as prometheus_client writes it: requests and errors by method, route
    and status, and the duration histogram's sum and count."""
    requests = reads + orders
    return "\n".join(
        [
            "# HELP flaskfleet_http_requests_total HTTP requests by route, method and status code.",
            f'flaskfleet_http_requests_total{{method="GET",route="/api/v2/products",status="200"}} {reads}',  # noqa: E501
            f'flaskfleet_http_requests_total{{method="POST",route="/api/v1/orders",status="201"}} {orders - order_errors}',  # noqa: E501
            f'flaskfleet_http_requests_total{{method="POST",route="/api/v1/orders",status="500"}} {order_errors}',  # noqa: E501
            f'flaskfleet_http_request_errors_total{{method="POST",route="/api/v1/orders",status="500"}} {order_errors}',  # noqa: E501
            f'flaskfleet_http_request_duration_seconds_bucket{{le="0.1",method="GET",route="/api/v2/products"}} {requests}',  # noqa: E501
            f'flaskfleet_http_request_duration_seconds_count{{method="GET",route="/api/v2/products"}} {requests}',  # noqa: E501
            f'flaskfleet_http_request_duration_seconds_sum{{method="GET",route="/api/v2/products"}} {seconds}',  # noqa: E501
            "",
        ]
    )


BEFORE = metrics(1000, 100, 0, 10.0)


def judge(tmp_path: Path, canary: str, other: str) -> subprocess.CompletedProcess:
    """The judgement on app-1 (the canary) with app-2 as the rest of the fleet."""

    def results(app_1: str, app_2: str) -> dict:
        return {
            "results": [{"item": "app-1", "content": app_1}, {"item": "app-2", "content": app_2}]
        }

    play = [
        {
            "name": "Judge made-up counters",
            "hosts": "app-1",
            "gather_facts": False,
            "connection": "local",
            "vars": {
                **SETTINGS,
                "deploy_metrics_before": results(BEFORE, BEFORE),
                "deploy_metrics_after": results(canary, other),
            },
            "tasks": [{"ansible.builtin.include_tasks": str(JUDGEMENT)}],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "hosts").write_text(f"app-1 ansible_python_interpreter={sys.executable}\napp-2\n")
    (tmp_path / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n")
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", tmp_path / "hosts", tmp_path / "play.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")},
    )


def judged_routes(output: str) -> list[dict]:
    line = next(x for x in output.splitlines() if "routes judged" in x)
    return yaml.safe_load(line.split(": ", 1)[1].rstrip('",'))


def test_a_canary_like_the_others_passes(tmp_path):
    result = judge(tmp_path, metrics(4000, 145, 0, 40.0), metrics(4100, 146, 0, 41.0))
    assert result.returncode == 0, result.stdout
    routes = {route["route"]: route for route in judged_routes(result.stdout)}
    assert routes["GET /api/v2/products"]["requests"] == 3000
    assert routes["POST /api/v1/orders"]["requests"] == 45
    assert not any(route["failing"] for route in routes.values())


def test_a_broken_route_fails_although_busier_routes_dilute_it(tmp_path):
    """45 failed orders among 3,045 requests is a 1.5% ratio overall, under the allowed 2
    points: judged per route, the order route's 100% fails the canary."""
    result = judge(tmp_path, metrics(4000, 145, 45, 40.0), metrics(4100, 146, 0, 41.0))
    assert result.returncode != 0
    assert (
        "POST /api/v1/orders: error ratio 1.000 over 45 requests against 0.000 over 46 on the"
        " other nodes (allowed: +0.02)" in result.stdout
    ), result.stdout


def test_a_slow_canary_fails_on_latency(tmp_path):
    result = judge(tmp_path, metrics(4000, 145, 0, 400.0), metrics(4100, 146, 0, 41.0))
    assert result.returncode != 0
    assert "mean latency 128.1 ms against 9.9 ms (allowed up to 59.9 ms)" in result.stdout


def test_errors_the_other_nodes_have_too_do_not_fail_the_canary(tmp_path):
    result = judge(tmp_path, metrics(4000, 145, 10, 40.0), metrics(4100, 146, 10, 41.0))
    assert result.returncode == 0, result.stdout


def test_routes_the_canary_served_too_rarely_are_not_judged(tmp_path):
    result = judge(tmp_path, metrics(1010, 110, 5, 10.1), metrics(4100, 146, 0, 41.0))
    assert result.returncode == 0, result.stdout
    assert judged_routes(result.stdout) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("deploy_release", "../etc"),
        ("deploy_canary_seconds", "0"),
        ("deploy_canary_max_latency_ratio", "0.5"),
    ],
)
def test_deploy_refuses_bad_settings_before_changing_anything(tmp_path, variable, value):
    """deploy.yml's first task, on an inventory of one app host it never reaches: the assertion
    fails before any connection."""
    inventory = {
        "all": {
            "children": {
                "app": {"hosts": {"app-1": {"private_ip": "192.0.2.1"}}},
                "lb": {"hosts": {}},
                "worker": {"hosts": {}},
            }
        }
    }
    (tmp_path / "hosts.json").write_text(json.dumps(inventory))
    roles = ROOT / "ansible" / "roles"
    (tmp_path / "ansible.cfg").write_text(f"[defaults]\nroles_path = {roles}\n")
    extra = {"deploy_release": "good-1", variable: value}
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    command = [ANSIBLE_PLAYBOOK, "-i", tmp_path / "hosts.json", ROOT / "deploy.yml"]
    result = subprocess.run(
        [*command, "-e", json.dumps(extra), "-e", json.dumps(local)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")},
    )
    assert result.returncode != 0
    assert "deploy.yml needs -e deploy_release=<name>" in result.stdout, result.stdout
    assert "nothing was changed" in result.stdout
