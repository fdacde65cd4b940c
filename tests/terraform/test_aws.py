"""terraform/environments/aws against moto's AWS API on 127.0.0.1: apply builds
the VPC, security groups, instances and Elastic IPs and yields the inventory
(every group, each host's ansible_host and private_ip, SSH through the lb as
bastion); destroy removes it all. The provider is pointed at moto by an
override file in the session's copy of terraform/, never in the repository."""

import ipaddress
import json
import socket
import subprocess
import time
import uuid

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import VENV_BIN, ansible_env, ansible_inventory, run, write_inventory

GROUPS = ["lb", "app", "redis", "postgres_primary", "postgres_replica"]
REGION = "us-east-1"
OVERRIDE = """
provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_force_path_style         = true

  endpoints {{
    ec2 = "{url}"
    elb = "{url}"
    iam = "{url}"
    sts = "{url}"
  }}
}}
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, "moto_server exited"
            assert time.monotonic() < deadline, "moto_server did not listen within 30 s"
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def ec2(moto):
    return boto3.client(
        "ec2",
        endpoint_url=moto,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
    )


@pytest.fixture(scope="module")
def stack(tofu_for, moto, ec2):
    tofu = tofu_for("aws")
    (tofu.env_dir / "moto_override.tf").write_text(OVERRIDE.format(url=moto))
    tofu.init()
    # moto has no Debian AMI of the real owner: pass one it knows (the variable wins).
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    name = f"pt-{uuid.uuid4().hex[:6]}"
    public_key = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    variables = [
        *("-var", f"name={name}"),
        *("-var", f"region={REGION}"),
        *("-var", 'admin_cidrs=["203.0.113.0/24"]'),
        *("-var", f"ssh_public_key={public_key} pytest"),
        *("-var", f"ami_id={ami}"),
        # moto does not implement MonitorInstances.
        *("-var", "detailed_monitoring=false"),
    ]
    tofu("apply", "-auto-approve", "-input=false", *variables, timeout=600)
    return {"tofu": tofu, "name": name, "vars": variables, "inventory": tofu.inventory()}


def test_apply_builds_the_network_and_instances(stack, ec2):
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [stack["name"]]}])["Vpcs"]
    assert [vpc["CidrBlock"] for vpc in vpcs] == ["10.20.0.0/16"]
    vpc_id = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    tiers = {}
    for subnet in subnets:
        tags = {tag["Key"]: tag["Value"] for tag in subnet.get("Tags", [])}
        tiers.setdefault(tags.get("Tier"), set()).add(subnet["AvailabilityZone"])
    assert tiers == {
        "public": {"us-east-1a", "us-east-1b"},
        "private": {"us-east-1a", "us-east-1b"},
    }
    nat = ec2.describe_nat_gateways(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    assert len(nat["NatGateways"]) == 1
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    assert sum(len(r["Instances"]) for r in reservations) == 6


def test_security_groups_allow_only_the_designed_flows(stack, ec2):
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"{stack['name']}-*"]}]
    )["SecurityGroups"]
    by_id = {
        group["GroupId"]: group["GroupName"].removeprefix(f"{stack['name']}-") for group in groups
    }
    ingress = set()
    for group in groups:
        target = by_id[group["GroupId"]]
        for permission in group["IpPermissions"]:
            port = permission.get("FromPort")
            for pair in permission.get("UserIdGroupPairs", []):
                ingress.add((by_id[pair["GroupId"]], target, port))
            for block in permission.get("IpRanges", []):
                ingress.add((block["CidrIp"], target, port))
    private = ["app", "redis", "postgres-primary", "postgres-replica"]
    assert ingress == {
        ("0.0.0.0/0", "lb", 80),
        ("0.0.0.0/0", "lb", 443),
        ("203.0.113.0/24", "lb", 22),
        ("lb", "app", 8000),
        ("app", "redis", 6379),
        ("app", "postgres-primary", 5432),
        ("app", "postgres-replica", 5432),
        ("postgres-replica", "postgres-primary", 5432),
        *(("lb", tier, 22) for tier in private),
    }


def test_inventory_has_every_group_with_addresses(stack, tmp_path):
    inventory = stack["inventory"]
    children = inventory["all"]["children"]
    assert set(GROUPS) <= set(children)
    assert len(children["app"]["hosts"]) == 2
    vpc = ipaddress.ip_network("10.20.0.0/16")
    bastion = inventory["all"]["vars"]["flaskfleet_bastion"]
    assert ipaddress.ip_address(bastion) not in vpc
    for group in GROUPS:
        assert children[group]["hosts"], group
        for name, host_vars in children[group]["hosts"].items():
            assert name.startswith(f"{stack['name']}-"), name
            assert ipaddress.ip_address(host_vars["private_ip"]) in vpc
            expected = bastion if group == "lb" else host_vars["private_ip"]
            assert host_vars["ansible_host"] == expected, (name, host_vars)

    inventory_dir = write_inventory(tmp_path, "aws", inventory)
    graph = ansible_inventory(inventory_dir, "--graph")
    for group in [*GROUPS, "postgres"]:
        assert f"@{group}:" in graph, graph
    # The connection settings resolve as Ansible will use them (debug runs on
    # the controller, so nothing connects to moto's fake addresses).
    debug = (
        "msg={{ inventory_hostname }}|{{ ansible_user }}|{{ ansible_ssh_common_args }}"
        "|admin={{ common_admin_cidrs | join(',') }}"
    )
    result = run(
        [VENV_BIN / "ansible", "all", "-i", inventory_dir, "-m", "debug", "-a", debug],
        env=ansible_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for group in GROUPS:
        for name in children[group]["hosts"]:
            line = next(line for line in result.stdout.splitlines() if f'"{name}|' in line)
            assert f"{name}|admin|" in line, line
            assert ("ProxyJump=admin@" + bastion in line) == (group != "lb"), line
            # The common role's firewall admits SSH from Terraform's admin_cidrs.
            assert "|admin=203.0.113.0/24" in line, line


def test_destroy_removes_everything(stack, ec2):
    tofu = stack["tofu"]
    tofu("destroy", "-auto-approve", "-input=false", *stack["vars"], timeout=600)
    assert tofu("state", "list", check=False).stdout.strip() == ""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [stack["name"]]}])["Vpcs"]
    assert vpcs == []
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    assert running == []
    assert json.loads(tofu("output", "-json").stdout) == {}
