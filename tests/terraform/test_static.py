"""What needs no infrastructure: formatting, validation, the security scan, and
variables that must be refused at plan time with their validation message."""

import json
import re

import pytest
import yaml
from helpers import ROOT, TOFU, one_line, run

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
AWS_REQUIRED_VARS = [
    "-var",
    'admin_cidrs=["203.0.113.0/24"]',
    "-var",
    "ssh_public_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2 pytest",
    "-var",
    "public_domain=shop.example.com",
    "-var",
    "acme_email=ops@example.com",
]
LOCAL_REQUIRED_VARS = [
    "-var",
    "admin_ssh_public_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2 pytest",
]


def test_fmt_check():
    result = run([TOFU, "fmt", "-check", "-recursive", "-diff", "terraform"])
    assert result.returncode == 0, f"tofu fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("env", ["local", "aws"])
def test_validate(tofu_for, env):
    tofu = tofu_for(env)
    tofu.init()
    result = tofu("validate", "-json")
    report = json.loads(result.stdout)
    assert report["valid"], report["diagnostics"]
    assert report["warning_count"] == 0, report["diagnostics"]


def test_lock_files_pin_the_mirrored_providers():
    """The committed lock files name exactly the providers the mirror holds."""
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    expected = {
        "local": ("terraform-lxd/lxd", versions["LXD_PROVIDER_VERSION"]),
        "aws": ("hashicorp/aws", versions["AWS_PROVIDER_VERSION"]),
    }
    for env, (source, version) in expected.items():
        lock = (ROOT / "terraform" / "environments" / env / ".terraform.lock.hcl").read_text()
        assert f'/{source}" {{\n  version     = "{version}"' in lock, lock


def test_aws_service_ports_agree_with_the_playbooks_ports(tofu_for):
    """The security groups open the ports the roles serve: the aws environment's
    service_ports default equals group_vars/all/ports.yml, so neither can drift.
    (python-hcl2 is not in the venv, so OpenTofu itself reads the default.)"""
    ports = yaml.safe_load((ROOT / "group_vars" / "all" / "ports.yml").read_text())
    tofu = tofu_for("aws")
    tofu.init()
    result = run(
        [TOFU, f"-chdir={tofu.env_dir}", "console", "-no-color"],
        input="jsonencode(var.service_ports)\n",
        env=tofu.env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    service_ports = json.loads(json.loads(result.stdout.strip()))
    assert service_ports == {
        "app": ports["app_port"],
        "redis": ports["redis_port"],
        "postgresql": ports["postgresql_port"],
        "worker_metrics": ports["worker_metrics_port"],
        "node_exporter": ports["exporters_node_port"],
        "postgres_exporter": ports["exporters_postgres_port"],
        "redis_exporter": ports["exporters_redis_port"],
        "nginx_exporter": ports["exporters_nginx_port"],
        "prometheus": ports["prometheus_port"],
        "alertmanager": ports["prometheus_alertmanager_port"],
        "journal_remote": ports["journal_remote_port"],
        "pgbackrest": ports["pgbackrest_tls_port"],
        "etcd_client": ports["etcd_client_port"],
        "etcd_peer": ports["etcd_peer_port"],
        "patroni": ports["postgresql_patroni_port"],
    }
    # The lb's security group opens 80 (redirect, ACME HTTP-01) and 443, fixed
    # by the protocols rather than chosen: nginx must listen on exactly those.
    assert (ports["nginx_listen_port"], ports["nginx_tls_port"]) == (80, 443)


def test_aws_tfvars_example_covers_every_variable_and_passes_validation(tofu_for):
    """terraform.tfvars.example names every variable of the aws environment
    (required ones set, optional ones commented with their default), and its
    values pass the variables' validation."""
    env_dir = ROOT / "terraform" / "environments" / "aws"
    declared = re.findall(r'^variable "(\w+)"', (env_dir / "variables.tf").read_text(), re.M)
    example = (env_dir / "terraform.tfvars.example").read_text()
    named = set(re.findall(r"^(?:# )?(\w+) += ", example, re.M))
    assert set(declared) <= named, set(declared) - named
    required = {"admin_cidrs", "ssh_public_key", "public_domain", "acme_email"}
    assert set(re.findall(r"^(\w+) += ", example, re.M)) == required
    tofu = tofu_for("aws")
    tofu.init()
    # `tofu console` reports a value that fails validation as an error (on
    # stderr, with exit status 0) and needs no provider.
    result = run(
        [
            *(TOFU, f"-chdir={tofu.env_dir}", "console", "-no-color"),
            f"-var-file={env_dir / 'terraform.tfvars.example'}",
        ],
        input=f"jsonencode([{', '.join(f'var.{name}' for name in sorted(required))}])\n",
        env=tofu.env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid value for variable" not in result.stderr, result.stderr
    assert "shop.example.com" in result.stdout, result.stdout


def test_checkov_finds_nothing_unexplained():
    assert CHECKOV.exists(), "run `make setup` first: the checkov venv is missing"
    # --skip-download: no call home; every suppression carries its reason inline.
    result = run(
        [
            CHECKOV,
            "--directory",
            ROOT / "terraform",
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "--quiet",
            "--output",
            "json",
        ]
    )
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    reports = reports if isinstance(reports, list) else [reports]
    assert reports, result.stderr
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    skipped = [
        check for report in reports for check in report.get("results", {}).get("skipped_checks", [])
    ]
    # checkov reports a bare `checkov:skip=ID` with this stand-in comment.
    unexplained = [
        f"{check['check_id']} {check['resource']}"
        for check in skipped
        if check.get("suppress_comment", "No comment provided") == "No comment provided"
    ]
    assert not unexplained, unexplained
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "variables", "message"),
    [
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "app_count=0"],
            "The app count must be a whole number from 1 to 50.",
        ),
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "worker_count=51"],
            "The worker count must be a whole number from 0 to 50.",
        ),
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "restore_count=2"],
            "The restore count must be 0 (no restore drill VM) or 1.",
        ),
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "network_cidr=10.118.300.0/24"],
            "The network CIDR must be an IPv4 subnet between /16 and /24",
        ),
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "name=Bad_Name"],
            "The environment name must be 2-12 characters",
        ),
        (
            "local",
            [*LOCAL_REQUIRED_VARS, "-var", "lb_http_port=80"],
            "The load balancer's host port must be",
        ),
        (
            "local",
            ["-var", "admin_ssh_public_key=hunter2"],
            "The admin key must be a single OpenSSH public key line",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "app_count=0"],
            "The app count must be a whole number from 1 to 50.",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "worker_count=1.5"],
            "The worker count must be a whole number from 0 to 50.",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "restore_count=-1"],
            "The restore count must be 0 (no restore drill VM) or 1.",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "restore_count=2"],
            "The restore count must be 0 (no restore drill VM) or 1.",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "vpc_cidr=10.20.0.0"],
            "The VPC CIDR must be an IPv4 block between /16 and /24",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", 'admin_cidrs=["0.0.0.0/0"]'],
            "SSH must not be open to the whole internet",
        ),
        (
            "aws",
            [
                *AWS_REQUIRED_VARS,
                "-var",
                "service_ports={app=8000, redis=0, postgresql=5432, worker_metrics=9808,"
                " node_exporter=9100, postgres_exporter=9187, redis_exporter=9121,"
                " nginx_exporter=9113, prometheus=9090, alertmanager=9093, journal_remote=19532,"
                " pgbackrest=8432, etcd_client=2379, etcd_peer=2380, patroni=8008}",
            ],
            "Every service port must be a whole number from 1 to 65535.",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "public_domain=https://shop.example.com"],
            "The public domain must be a lower-case DNS name",
        ),
        (
            "aws",
            [*AWS_REQUIRED_VARS, "-var", "acme_email=ops.example.com"],
            "The ACME email must be an email address",
        ),
    ],
    ids=[
        "local-app-count-0",
        "local-worker-count-51",
        "local-restore-count-2",
        "local-bad-cidr",
        "local-bad-name",
        "local-privileged-port",
        "local-admin-key-not-a-key",
        "aws-app-count-0",
        "aws-worker-count-not-whole",
        "aws-restore-count-negative",
        "aws-restore-count-2",
        "aws-cidr-without-prefix",
        "aws-ssh-open-to-world",
        "aws-service-port-0",
        "aws-domain-is-a-url",
        "aws-acme-email-without-at",
    ],
)
def test_bad_variable_fails_at_plan(tofu_for, env, variables, message):
    tofu = tofu_for(env)
    tofu.init()
    result = tofu("plan", "-input=false", "-lock=false", *variables, check=False, timeout=300)
    assert result.returncode != 0, result.stdout
    output = one_line(result.stdout + result.stderr)
    assert "Invalid value for variable" in output, output
    assert message in output, output
