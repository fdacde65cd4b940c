"""terraform/environments/aws against moto's AWS API on 127.0.0.1, walked as
its README.md walks it: remote state from backend.tf.example (S3, encrypted,
locked), apply builds the VPC, security groups, instances, Elastic IPs and
pgBackRest's private S3 bucket with the instance profile that uses it, and
yields the inventory (every group, each host's ansible_host and private_ip, SSH
through the lb as bastion, the TLS edge's domain); `tofu output -json
ansible_inventory` written beside the committed group_vars is what
ansible-inventory and site.yml (with a throwaway vault) see; removing an app
node touches no other; destroy removes it all. The provider and the backend are
pointed at moto by an override file and -backend-config in a copy of
terraform/ of this module's own, never in the repository."""

import ipaddress
import json
import re
import shutil
import socket
import subprocess
import time
import uuid
from types import SimpleNamespace

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import (
    GROUPS,
    ROOT,
    VENV_BIN,
    Tofu,
    ansible_env,
    ansible_inventory,
    copy_terraform,
    run,
    write_inventory,
)

REGION = "us-east-1"
DOMAIN = "shop.example.com"
ACME_EMAIL = "ops@example.com"
# What backend.tf.example sets and the test keeps (only the bucket and moto's
# endpoint are replaced).
STATE_KEY = "flaskfleet/flaskfleet/terraform.tfstate"
STATE_REGION = "eu-central-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # moto's
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
    kms = "{url}"
    s3  = "{url}"
    sts = "{url}"
  }}
}}
"""


MOTO_START_TIMEOUT = 300


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # Its imports take 1.5 s of CPU on an idle machine, but `make test` runs this
    # suite at nice 19 beside a stack bring-up that holds both cores: there it
    # took over 30 s. The wait is as long as run-tests.sh's connection timeout.
    deadline = time.monotonic() + MOTO_START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, f"moto_server exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, (
                f"moto_server did not listen within {MOTO_START_TIMEOUT} s: "
                f"{log_path.read_text()[-2000:]}"
            )
            time.sleep(0.2)
    yield SimpleNamespace(url=url, log=log_path)
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def ec2(moto):
    return boto3.client("ec2", endpoint_url=moto.url, region_name=REGION, **CREDENTIALS)


@pytest.fixture(scope="module")
def kms(moto):
    return boto3.client("kms", endpoint_url=moto.url, region_name=REGION, **CREDENTIALS)


@pytest.fixture(scope="module")
def s3(moto):
    return boto3.client("s3", endpoint_url=moto.url, region_name=STATE_REGION, **CREDENTIALS)


@pytest.fixture(scope="module")
def iam(moto):
    return boto3.client("iam", endpoint_url=moto.url, region_name=REGION, **CREDENTIALS)


@pytest.fixture(scope="module")
def state_bucket(s3):
    bucket = f"pt-state-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": STATE_REGION})
    return bucket


@pytest.fixture(scope="module")
def aws_tofu(tmp_path_factory, plugin_cache, moto, state_bucket):
    """The aws environment as README.md sets it up: backend.tf from the example,
    `tofu init` (its bucket and moto's endpoint given with -backend-config).
    A copy of its own: the backend must not reach the session's shared copy."""
    env_dir = copy_terraform(tmp_path_factory.mktemp("tf-aws")) / "environments" / "aws"
    (env_dir / "moto_override.tf").write_text(OVERRIDE.format(url=moto.url))
    shutil.copy(env_dir / "backend.tf.example", env_dir / "backend.tf")
    tofu = Tofu(env_dir, plugin_cache)
    tofu.env.update({key.upper(): value for key, value in CREDENTIALS.items()})
    tofu(
        *("init", "-input=false"),
        *("-backend-config", f"bucket={state_bucket}"),
        *("-backend-config", f'endpoints={{s3="{moto.url}"}}'),
        *("-backend-config", "use_path_style=true"),
        *("-backend-config", "skip_credentials_validation=true"),
        *("-backend-config", "skip_requesting_account_id=true"),
        *("-backend-config", "skip_metadata_api_check=true"),
    )
    tofu.initialized = True
    return tofu


@pytest.fixture(scope="module")
def stack(aws_tofu, ec2):
    tofu = aws_tofu
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
        *("-var", f"public_domain={DOMAIN}"),
        *("-var", f"acme_email={ACME_EMAIL}"),
        *("-var", f"ami_id={ami}"),
        # moto does not implement MonitorInstances.
        *("-var", "detailed_monitoring=false"),
        # The restore drill VM too: every tier has a host.
        *("-var", "restore_count=1"),
    ]
    tofu("apply", "-auto-approve", "-input=false", *variables, timeout=600)
    return {"tofu": tofu, "name": name, "vars": variables, "inventory": tofu.inventory()}


@pytest.fixture(scope="module")
def inventory_dir(stack, tmp_path_factory):
    """inventories/aws as README.md writes it: `tofu output -json
    ansible_inventory > ../../../inventories/aws/hosts.json`, beside the
    committed group_vars."""
    hosts_json = stack["tofu"]("output", "-json", "ansible_inventory").stdout
    return write_inventory(tmp_path_factory.mktemp("inv"), "aws", hosts_json)


@pytest.fixture(scope="module")
def vault(stack):
    """A throwaway vault, as README.md has the operator make one:
    `bash scripts/secrets.sh <stack>`; removed afterwards."""
    secret_dir = ROOT / ".secrets" / stack["name"]
    assert not secret_dir.exists(), secret_dir
    try:
        result = run(["bash", "scripts/secrets.sh", stack["name"]], timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        yield [
            *("--vault-password-file", secret_dir / "vault-password"),
            *("-e", f"@{secret_dir / 'vault.yml'}"),
        ]
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


def hosts_by_group(stack):
    children = stack["inventory"]["all"]["children"]
    return {group: sorted(children[group]["hosts"]) for group in GROUPS}


def test_state_is_remote_encrypted_and_locked(stack, s3, state_bucket, moto):
    """backend.tf.example as given: the state object in S3, encrypted at rest,
    and every state change under a lock file beside it."""
    state = s3.head_object(Bucket=state_bucket, Key=STATE_KEY)
    assert state["ServerSideEncryption"] == "AES256"
    body = json.loads(s3.get_object(Bucket=state_bucket, Key=STATE_KEY)["Body"].read())
    assert any(r["type"] == "aws_instance" for r in body["resources"])
    with open(moto.log) as log:
        locks = [line for line in log if f"PUT /{state_bucket}/{STATE_KEY}.tflock" in line]
    assert locks, "no lock file was taken in the state bucket"
    assert "Contents" not in s3.list_objects_v2(Bucket=state_bucket, Prefix=f"{STATE_KEY}.tflock")


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
    # lb, 2 app, 2 worker, redis, queue, postgres-primary, postgres-replica, monitor, restore.
    assert sum(len(r["Instances"]) for r in reservations) == 11


def test_each_instance_gets_its_tiers_type_volume_zone_and_address(stack, ec2):
    """What differs per tier: the instance type (instance_types, postgres for
    both database tiers and the restore drill VM), a 20 GiB root volume for the
    monitor and 10 + database_volume_size for the restore VM (10 else), the
    subnet (the lb public; queue and replica in the second zone, app and worker
    nodes alternating) and an Elastic IP for the lb alone."""
    name = stack["name"]
    ours = {"Name": "tag:Environment", "Values": [name]}
    subnets = {
        subnet["SubnetId"]: (
            {tag["Key"]: tag["Value"] for tag in subnet.get("Tags", [])}.get("Tier"),
            subnet["AvailabilityZone"],
        )
        for subnet in ec2.describe_subnets()["Subnets"]
    }
    instances = {
        tags["Name"].removeprefix(f"{name}-"): instance
        for reservation in ec2.describe_instances(
            Filters=[ours, {"Name": "instance-state-name", "Values": ["running"]}]
        )["Reservations"]
        for instance in reservation["Instances"]
        for tags in [{tag["Key"]: tag["Value"] for tag in instance["Tags"]}]
    }
    volumes = {
        volume["VolumeId"]: volume["Size"]
        for volume in ec2.describe_volumes(Filters=[ours])["Volumes"]
    }
    addresses = {address.get("InstanceId") for address in ec2.describe_addresses()["Addresses"]}
    placed = {
        host: (
            instance["InstanceType"],
            volumes[instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]],
            *subnets[instance["SubnetId"]],
            instance["InstanceId"] in addresses,
        )
        for host, instance in instances.items()
    }
    a, b = f"{REGION}a", f"{REGION}b"
    assert placed == {
        "lb": ("t3.micro", 10, "public", a, True),
        "app-1": ("t3.small", 10, "private", a, False),
        "app-2": ("t3.small", 10, "private", b, False),
        "worker-1": ("t3.small", 10, "private", a, False),
        "worker-2": ("t3.small", 10, "private", b, False),
        "redis": ("t3.small", 10, "private", a, False),
        "queue": ("t3.small", 10, "private", b, False),
        "postgres-primary": ("t3.medium", 10, "private", a, False),
        "postgres-replica": ("t3.medium", 10, "private", b, False),
        "monitor": ("t3.small", 20, "private", a, False),
        "restore": ("t3.medium", 30, "private", a, False),
    }


def test_each_database_keeps_its_data_on_a_protected_volume_of_its_own(stack, ec2, kms):
    """The databases' PGDATA volume: encrypted with the stack's own rotated KMS key, 20 GiB,
    in the instance's zone, attached as /dev/sdf, its ID in the inventory (the device's NVMe
    serial); termination protection asked for the database instances; no other tier gets
    either."""
    name = stack["name"]
    children = stack["inventory"]["all"]["children"]
    databases = {f"{name}-postgres-primary", f"{name}-postgres-replica"}
    for group, spec in children.items():
        for host, host_vars in (spec.get("hosts") or {}).items():
            assert ("data_volume_id" in host_vars) == (host in databases), (group, host)
    for host in databases:
        host_vars = children[host.removeprefix(f"{name}-").replace("-", "_")]["hosts"][host]
        volume = ec2.describe_volumes(VolumeIds=[host_vars["data_volume_id"]])["Volumes"][0]
        assert (volume["Size"], volume["Encrypted"], volume["VolumeType"]) == (20, True, "gp3")
        key = kms.describe_key(KeyId=volume["KmsKeyId"])["KeyMetadata"]
        described = (key["KeyManager"], key["Description"])
        assert described == ("CUSTOMER", f"{name}: the databases' data volumes")
        assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"]
        (attachment,) = volume["Attachments"]
        assert attachment["Device"] == "/dev/sdf"
        instance = ec2.describe_instances(InstanceIds=[attachment["InstanceId"]])
        instance = instance["Reservations"][0]["Instances"][0]
        assert volume["AvailabilityZone"] == instance["Placement"]["AvailabilityZone"]
    # moto's RunInstances ignores DisableApiTermination (it reports false whatever was
    # asked), so the protection is read from what a plan asks EC2 for.
    tofu = stack["tofu"]
    tofu("plan", "-input=false", "-out=protection.tfplan", *stack["vars"])
    plan = json.loads(tofu("show", "-json", "protection.tfplan").stdout)
    state = plan["planned_values"]["root_module"]
    protected = {
        resource["values"]["tags"]["Name"]: resource["values"]["disable_api_termination"]
        for module in state["child_modules"]
        for resource in module["resources"]
        if resource["type"] == "aws_instance"
    }
    assert {host for host, on in protected.items() if on} == databases, protected


def test_the_postgresql_role_is_given_each_database_volumes_device(stack, inventory_dir, vault):
    """inventories/aws/group_vars/postgres names, for each database host, the NVMe device
    that is its own data volume (the role makes and mounts its file system); no device is
    named for any other host."""
    result = run(
        [
            *(VENV_BIN / "ansible", "all", "-i", inventory_dir, "--connection", "local"),
            *("-m", "ansible.builtin.debug", "-a", "var=postgresql_data_device"),
            *vault,
        ],
        env=ansible_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # "host | SUCCESS => {...}" per host, the JSON spread over the following lines.
    devices = {
        host: json.loads(body)["postgresql_data_device"]
        for host, body in re.findall(r"^(\S+) \| SUCCESS => (\{.*?^\})", result.stdout, re.M | re.S)
    }
    children = stack["inventory"]["all"]["children"]
    expected = {}
    for group in ("postgres_primary", "postgres_replica"):
        for host, host_vars in children[group]["hosts"].items():
            serial = host_vars["data_volume_id"].replace("-", "")
            expected[host] = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}"
    assert {host: device for host, device in devices.items() if host in expected} == expected
    others = {host: device for host, device in devices.items() if host not in expected}
    assert others and all("is undefined" in device for device in others.values()), others


def test_a_newer_ami_replaces_no_instance(stack, ec2):
    """A new Debian image (here: another AMI than the stack's) plans no change to any
    running instance, least of all the databases: the AMI is read at creation only."""
    tofu = stack["tofu"]
    unchanged = planned_changes(tofu, *stack["vars"])
    current = next(v for v in stack["vars"] if v.startswith("ami_id="))
    newer = next(
        image["ImageId"]
        for image in ec2.describe_images(Owners=["amazon"])["Images"]
        if f"ami_id={image['ImageId']}" != current
    )
    assert planned_changes(tofu, *stack["vars"], "-var", f"ami_id={newer}") == unchanged


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
    private = [
        *("app", "worker", "redis", "queue", "postgres-primary", "postgres-replica"),
        *("restore", "monitor"),
    ]
    monitored = ["lb", *private[:-1]]
    # Nothing reaches a worker or the restore VM but SSH through the bastion
    # and the monitor's scrapes; the queue only from its producers (app) and
    # consumers (worker) and its exporter from the monitor; the monitor only
    # from the hosts that upload their journals, for Prometheus and
    # Alertmanager from admins tunnelling through the bastion, and on
    # pgBackRest's port from the databases (WAL archive) and the restore VM;
    # the databases on pgBackRest's port from the monitor (backups). Failover:
    # PostgreSQL both ways between the databases (either may lead), etcd's
    # client port from the databases to the other members (the monitor is the
    # third), its peer port between every two members, and Patroni's REST API
    # between the databases.
    databases = ["postgres-primary", "postgres-replica"]
    etcd_members = [*databases, "monitor"]
    assert ingress == {
        ("0.0.0.0/0", "lb", 80),
        ("0.0.0.0/0", "lb", 443),
        ("203.0.113.0/24", "lb", 22),
        ("lb", "app", 8000),
        ("app", "redis", 6379),
        ("app", "postgres-primary", 5432),
        ("app", "postgres-replica", 5432),
        ("postgres-replica", "postgres-primary", 5432),
        ("postgres-primary", "postgres-replica", 5432),
        ("app", "queue", 6379),
        ("worker", "queue", 6379),
        ("worker", "postgres-primary", 5432),
        ("worker", "postgres-replica", 5432),
        *(("lb", tier, 22) for tier in private),
        *(("monitor", tier, 9100) for tier in monitored),
        *((tier, "monitor", 19532) for tier in monitored),
        ("monitor", "app", 8000),
        ("monitor", "worker", 9808),
        ("monitor", "postgres-primary", 9187),
        ("monitor", "postgres-replica", 9187),
        ("monitor", "redis", 9121),
        ("monitor", "queue", 9121),
        ("monitor", "lb", 9113),
        ("lb", "monitor", 9090),
        ("lb", "monitor", 9093),
        ("postgres-primary", "monitor", 8432),
        ("postgres-replica", "monitor", 8432),
        ("monitor", "postgres-primary", 8432),
        ("monitor", "postgres-replica", 8432),
        ("restore", "monitor", 8432),
        *(
            (member, other, 2379)
            for member in databases
            for other in etcd_members
            if other != member
        ),
        *(
            (member, other, 2380)
            for member in etcd_members
            for other in etcd_members
            if other != member
        ),
        ("postgres-replica", "postgres-primary", 8008),
        ("postgres-primary", "postgres-replica", 8008),
    }
    # Each flow between tiers is opened at its source too, and nothing else
    # leaves a tier but package mirrors on 80 and 443.
    egress = set()
    for group in groups:
        source = by_id[group["GroupId"]]
        for permission in group["IpPermissionsEgress"]:
            port = permission.get("FromPort")
            for pair in permission.get("UserIdGroupPairs", []):
                egress.add((source, by_id[pair["GroupId"]], port))
            for block in permission.get("IpRanges", []):
                egress.add((source, block["CidrIp"], port))
    assert egress == {
        *((source, target, port) for source, target, port in ingress if source in by_id.values()),
        *((tier, "0.0.0.0/0", port) for tier in by_id.values() for port in (80, 443)),
    }


def test_inventory_has_every_group_with_addresses(stack, inventory_dir):
    inventory = stack["inventory"]
    children = inventory["all"]["children"]
    assert set(GROUPS) <= set(children)
    assert len(children["app"]["hosts"]) == 2
    assert hosts_by_group(stack) == {
        "lb": [f"{stack['name']}-lb"],
        "app": [f"{stack['name']}-app-1", f"{stack['name']}-app-2"],
        "worker": [f"{stack['name']}-worker-1", f"{stack['name']}-worker-2"],
        "redis": [f"{stack['name']}-redis"],
        "queue": [f"{stack['name']}-queue"],
        "postgres_primary": [f"{stack['name']}-postgres-primary"],
        "postgres_replica": [f"{stack['name']}-postgres-replica"],
        "monitor": [f"{stack['name']}-monitor"],
        "restore": [f"{stack['name']}-restore"],
    }
    inventory_vars = inventory["all"]["vars"]
    # TLS at the edge: nginx gets the domain and the ACME contact from here.
    assert inventory_vars["flaskfleet_lb_url"] == f"https://{DOMAIN}"
    assert inventory_vars["flaskfleet_public_domain"] == DOMAIN
    assert inventory_vars["flaskfleet_acme_email"] == ACME_EMAIL
    vpc = ipaddress.ip_network("10.20.0.0/16")
    bastion = inventory_vars["flaskfleet_bastion"]
    assert ipaddress.ip_address(bastion) not in vpc
    for group in GROUPS:
        assert children[group]["hosts"], group
        for name, host_vars in children[group]["hosts"].items():
            assert name.startswith(f"{stack['name']}-"), name
            assert ipaddress.ip_address(host_vars["private_ip"]) in vpc
            expected = bastion if group == "lb" else host_vars["private_ip"]
            assert host_vars["ansible_host"] == expected, (name, host_vars)

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


def test_outputs_name_the_url_and_the_address_dns_points_at(stack):
    outputs = json.loads(stack["tofu"]("output", "-json").stdout)
    assert outputs["lb_url"]["value"] == f"https://{DOMAIN}"
    assert (
        outputs["lb_public_ip"]["value"]
        == (stack["inventory"]["all"]["vars"]["flaskfleet_bastion"])
    )


def test_ansible_inventory_graph_of_the_written_inventory(stack, inventory_dir):
    graph = ansible_inventory(inventory_dir, "--graph")
    # --graph: "  |--@group:" then "  |  |--host" lines under it.
    members, group = {}, None
    for line in graph.splitlines():
        name = line.strip(" |-")
        if name.startswith("@"):
            group = name.removeprefix("@").removesuffix(":")
            members[group] = []
        elif group:
            members[group].append(name)
    for group, hosts in hosts_by_group(stack).items():
        assert sorted(members[group]) == hosts, graph
    assert "@postgres:" in graph, graph
    assert "@postgres_primary:" in graph.split("@postgres:", 1)[1], graph


def site_playbook(inventory_dir, vault, *args, playbook="site.yml"):
    result = run(
        [
            *(VENV_BIN / "ansible-playbook", "-i", inventory_dir, playbook),
            *vault,
            *("-e", "app_release=test"),
            *args,
        ],
        env=ansible_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # One block per play: "  play #N (pattern): name ..." up to the next one.
    return re.split(r"\n(?=  play #\d+ )", result.stdout)[1:]


def test_site_yml_plays_reach_the_right_hosts(stack, inventory_dir, vault):
    """`ansible-playbook -i inventories/aws site.yml --list-hosts` with the vault,
    as README.md runs it: each play's hosts, nothing connected to."""
    groups = hosts_by_group(stack)
    databases = groups["postgres_primary"] + groups["postgres_replica"]
    expected = {
        "all": sorted(host for hosts in groups.values() for host in hosts),
        "postgres": sorted(databases),
        # etcd's members, and pgBackRest's repository host with its databases.
        "postgres:monitor": sorted(databases + groups["monitor"]),
        "monitor:postgres": sorted(databases + groups["monitor"]),
        **groups,
    }
    plays = site_playbook(inventory_dir, vault, "--list-hosts")
    assert [re.match(r"  play #\d+ \(([\w:]+)\)", play)[1] for play in plays] == [
        "all",
        "all",
        "postgres:monitor",
        "postgres",
        "monitor:postgres",
        "redis",
        "queue",
        "app",
        "worker",
        "lb",
        "all",
        "monitor",
    ]
    for play in plays:
        pattern = re.match(r"  play #\d+ \(([\w:]+)\)", play)[1]
        listed = re.search(r"hosts \((\d+)\):\n((?:      \S+\n?)*)", play)
        assert listed, play
        assert sorted(listed[2].split()) == expected[pattern], play
        assert int(listed[1]) == len(expected[pattern]), play


def test_restore_yml_plays_reach_the_restore_vm_and_the_repository_host(
    stack, inventory_dir, vault
):
    """restore.yml's plays reach the restore drill VM Terraform made (restore_count=1)
    and the repository host, and nothing else."""
    groups = hosts_by_group(stack)
    plays = site_playbook(
        inventory_dir,
        vault,
        "-e",
        "restore_target=2026-01-01",
        "--list-hosts",
        playbook="restore.yml",
    )
    listed = {}
    for play in plays:
        pattern = re.match(r"  play #\d+ \(([\w:]+)\)", play)[1]
        hosts = re.search(r"hosts \(\d+\):\n((?:      \S+\n?)*)", play)[1].split()
        listed.setdefault(pattern, sorted(hosts))
    assert groups["restore"] == [f"{stack['name']}-restore"]
    assert listed == {
        "localhost": ["localhost"],
        "restore": groups["restore"],
        "monitor": groups["monitor"],
    }


def test_site_yml_lists_each_plays_role_tasks(inventory_dir, vault):
    """--list-tasks parses every role for these hosts without connecting."""
    roles = [
        *("common", "journal", "etcd", "postgresql", "pgbackrest"),
        *("redis", "redis", "app", "worker"),
        "nginx",
        *("exporters", "prometheus"),
    ]
    plays = site_playbook(inventory_dir, vault, "--list-tasks")
    assert len(plays) == len(roles)
    for play, role in zip(plays, roles, strict=True):
        assert f"      {role} : " in play, play


def planned_changes(tofu, *variables):
    """Resource address => actions of every change `tofu plan` would make."""
    tofu("plan", "-input=false", "-out=test.tfplan", *variables)
    plan = json.loads(tofu("show", "-json", "test.tfplan").stdout)
    return {
        change["address"]: change["change"]["actions"]
        for change in plan["resource_changes"]
        if change["change"]["actions"] != ["no-op"]
    }


def test_removing_an_app_node_touches_no_other(stack):
    """Instances are keyed by name: app_count=1 destroys <name>-app-2 and plans
    nothing else. Measured against a plan of the unchanged stack, because moto
    reports no security groups on an instance, so every instance shows an
    in-place update of vpc_security_group_ids there (not on AWS)."""
    tofu = stack["tofu"]
    unchanged = planned_changes(tofu, *stack["vars"])
    assert all(actions == ["update"] for actions in unchanged.values()), unchanged
    shrunk = planned_changes(tofu, *stack["vars"], "-var", "app_count=1")
    app_2 = f'module.tier["app"].aws_instance.this["{stack["name"]}-app-2"]'
    assert shrunk == {**unchanged, app_2: ["delete"]}


def test_removing_a_worker_touches_no_other_and_zero_workers_is_a_valid_stack(stack):
    """Workers are keyed by name as app nodes are; worker_count=0 plans an empty
    worker group (the inventory allows it) and deletes both workers, nothing else."""
    tofu = stack["tofu"]
    unchanged = planned_changes(tofu, *stack["vars"])
    worker = 'module.tier["worker"].aws_instance.this["{}-worker-{}"]'
    shrunk = planned_changes(tofu, *stack["vars"], "-var", "worker_count=1")
    assert shrunk == {**unchanged, worker.format(stack["name"], 2): ["delete"]}
    none = planned_changes(tofu, *stack["vars"], "-var", "worker_count=0")
    assert none == {
        **unchanged,
        worker.format(stack["name"], 1): ["delete"],
        worker.format(stack["name"], 2): ["delete"],
    }


def test_removing_the_restore_vm_touches_no_other_and_leaves_an_empty_group(stack):
    """restore_count=0 deletes <name>-restore and nothing else (its security
    group stays, as the workers' does with worker_count=0), and the restore
    group stays in the inventory with no hosts."""
    tofu = stack["tofu"]
    unchanged = planned_changes(tofu, *stack["vars"])
    without = planned_changes(tofu, *stack["vars"], "-var", "restore_count=0")
    restore = f'module.tier["restore"].aws_instance.this["{stack["name"]}-restore"]'
    assert without == {**unchanged, restore: ["delete"]}
    plan = json.loads(tofu("show", "-json", "test.tfplan").stdout)
    inventory = plan["planned_values"]["outputs"]["ansible_inventory"]["value"]
    assert inventory["all"]["children"]["restore"] == {"hosts": {}}


def test_the_backup_bucket_is_private_encrypted_and_only_its_users_reach_it(stack, s3, iam, ec2):
    """pgBackRest's repository bucket: named after the stack, the account and the
    region, in the inventory for the playbook; public access blocked, plain HTTP
    refused, SSE-KMS by default, versioned, incomplete uploads aborted. The
    monitor, the repository host, (and no other host) carries the instance profile,
    whose role may list the bucket and get, put and delete its objects only."""
    name = stack["name"]
    account = boto3.client(
        "sts", endpoint_url=s3.meta.endpoint_url, region_name=REGION, **CREDENTIALS
    ).get_caller_identity()["Account"]
    bucket = f"{name}-pgbackrest-{account}-{REGION}"
    inventory_vars = stack["inventory"]["all"]["vars"]
    assert (inventory_vars["pgbackrest_s3_bucket"], inventory_vars["pgbackrest_s3_region"]) == (
        bucket,
        REGION,
    )
    outputs = json.loads(stack["tofu"]("output", "-json").stdout)
    assert outputs["pgbackrest_bucket"]["value"] == bucket

    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (lifecycle,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    (deny_http,) = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert deny_http["Effect"] == "Deny"
    assert deny_http["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # force_destroy off: a destroy stops at a bucket that holds backups.
    state = json.loads(stack["tofu"]("show", "-json").stdout)["values"]["root_module"]
    (bucket_state,) = [
        resource["values"]
        for module in state["child_modules"]
        for resource in module["resources"]
        if resource["type"] == "aws_s3_bucket"
    ]
    assert (bucket_state["bucket"], bucket_state["force_destroy"]) == (bucket, False)

    profiles = {
        {tag["Key"]: tag["Value"] for tag in instance["Tags"]}["Name"]: instance.get(
            "IamInstanceProfile", {}
        ).get("Arn", "")
        for reservation in ec2.describe_instances(
            Filters=[
                {"Name": "tag:Environment", "Values": [name]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )["Reservations"]
        for instance in reservation["Instances"]
    }
    users = {f"{name}-monitor"}
    assert {host for host, arn in profiles.items() if arn} == users, profiles
    assert all(profiles[host].endswith(f":instance-profile/{name}-pgbackrest") for host in users)
    profile = iam.get_instance_profile(InstanceProfileName=f"{name}-pgbackrest")
    (role,) = profile["InstanceProfile"]["Roles"]
    (policy_name,) = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policy_name)
    document = document["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    granted = {
        (action, statement["Resource"])
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    arn = f"arn:aws:s3:::{bucket}"
    assert granted == {
        ("s3:ListBucket", arn),
        ("s3:GetObject", f"{arn}/*"),
        ("s3:PutObject", f"{arn}/*"),
        ("s3:DeleteObject", f"{arn}/*"),
    }


def test_destroy_removes_everything(stack, ec2, s3):
    """Decommissioning as README.md says: an apply that lifts the databases' termination
    protection, then destroy."""
    tofu = stack["tofu"]
    unprotected = [*stack["vars"], "-var", "database_termination_protection=false"]
    tofu("apply", "-auto-approve", "-input=false", *unprotected, timeout=600)
    tofu("destroy", "-auto-approve", "-input=false", *unprotected, timeout=600)
    assert tofu("state", "list", check=False).stdout.strip() == ""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [stack["name"]]}])["Vpcs"]
    assert vpcs == []
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    assert running == []
    # The backup bucket holds no backup here, so it goes too.
    buckets = [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
    assert not [bucket for bucket in buckets if bucket.startswith(f"{stack['name']}-pgbackrest-")]
    assert json.loads(tofu("output", "-json").stdout) == {}
