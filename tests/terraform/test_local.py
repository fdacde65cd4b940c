"""terraform/environments/local on this machine's LXD: apply gives systemd
containers on a bridge of the stack's own, an inventory Ansible reads and
reaches every host through over SSH, the load balancer's HTTP port on 127.0.0.1 only;
destroy leaves nothing behind. The stack gets a name, subnet and port of its
own, so a developer's running stack is not touched."""

import ipaddress
import json
import random
import socket
import time
import urllib.request
import uuid

import pytest
from helpers import GROUPS, VENV_BIN, ansible_env, ansible_inventory, run, write_inventory

# Tiers of worker_count / app_count hosts (both default to 2); every other tier
# has one (the restore drill VM too: the stack is applied with restore_count=1).
SCALED = {"app": 2, "worker": 2}


def lxc_query(path):
    result = run(["lxc", "query", path], timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def free_subnet():
    """A /24 in 10.118.128.0/17 that no route on this host covers yet."""
    routes = run(["ip", "-4", "route"]).stdout.split()
    taken = [ipaddress.ip_network(word, strict=False) for word in routes if "/" in word]
    for _ in range(100):
        subnet = ipaddress.ip_network(f"10.118.{random.randint(128, 254)}.0/24")  # noqa: S311
        if not any(subnet.overlaps(other) for other in taken):
            return str(subnet)
    pytest.fail("no free /24 in 10.118.128.0/17")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hosts_of(inventory):
    children = inventory["all"]["children"]
    return {
        name: {"group": group, **host_vars}
        for group in GROUPS
        for name, host_vars in children[group]["hosts"].items()
    }


class Stack:
    def __init__(self, tofu, ssh_dir):
        self.tofu = tofu
        self.name = f"pt-{uuid.uuid4().hex[:6]}"
        self.cidr = free_subnet()
        self.port = free_port()
        self.prometheus_port = free_port()
        self.alertmanager_port = free_port()
        self.ssh_dir = ssh_dir
        keygen = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ssh_dir / "id_ed25519"])
        assert keygen.returncode == 0, keygen.stderr
        self.vars = [
            *("-var", f"name={self.name}"),
            *("-var", f"network_cidr={self.cidr}"),
            *("-var", f"lb_http_port={self.port}"),
            *("-var", f"prometheus_host_port={self.prometheus_port}"),
            *("-var", f"alertmanager_host_port={self.alertmanager_port}"),
            *("-var", "restore_count=1"),
            *("-var", f"admin_ssh_public_key={(ssh_dir / 'id_ed25519.pub').read_text()}"),
        ]
        self.inventory = None
        self.destroyed = False

    def destroy(self):
        # Stopped at once first, as `make down` does (scripts/stack.sh): the provider gives
        # each VM 30 s to shut down and fails the destroy past that, which a machine busy
        # with make test's other lanes can exceed (systemd's shutdown of ten VMs at once).
        for instance in self.leftovers()[0]:
            if lxc_query(f"/1.0/instances/{instance}/state")["status"] != "Running":
                continue
            stop = run(["lxc", "stop", "--force", instance])
            assert stop.returncode == 0, stop.stderr
        result = self.tofu("destroy", "-auto-approve", "-input=false", *self.vars, check=False)
        self.destroyed = result.returncode == 0
        return result

    def leftovers(self):
        instances = [
            path.rsplit("/", 1)[-1]
            for path in lxc_query("/1.0/instances")
            if path.rsplit("/", 1)[-1].startswith(f"{self.name}-")
        ]
        networks = [
            path.rsplit("/", 1)[-1]
            for path in lxc_query("/1.0/networks")
            if path.rsplit("/", 1)[-1] == f"{self.name}-br"
        ]
        profiles = [
            path.rsplit("/", 1)[-1]
            for path in lxc_query("/1.0/profiles")
            if path.rsplit("/", 1)[-1] == f"{self.name}-vm"
        ]
        return instances, networks, profiles


@pytest.fixture(scope="module")
def stack(tofu_for, tmp_path_factory):
    probe = run(["lxc", "query", "/1.0"], timeout=30)
    assert probe.returncode == 0, f"LXD does not answer (run `make setup`): {probe.stderr}"
    tofu = tofu_for("local")
    tofu.init()
    stack = Stack(tofu, tmp_path_factory.mktemp("ssh"))
    try:
        tofu("apply", "-auto-approve", "-input=false", *stack.vars, timeout=600)
        stack.inventory = tofu.inventory()
        yield stack
    finally:
        if not stack.destroyed:
            stack.destroy()
        # A failed destroy must not leak containers into the next run.
        instances, networks, profiles = stack.leftovers()
        for instance in instances:
            run(["lxc", "delete", "--force", instance])
        for network in networks:
            run(["lxc", "network", "delete", network])
        for profile in profiles:
            run(["lxc", "profile", "delete", profile])


@pytest.fixture(scope="module")
def inventory_dir(stack, tmp_path_factory):
    return write_inventory(tmp_path_factory.mktemp("inv"), "local", stack.inventory)


def test_inventory_has_every_group_and_host_variable(stack):
    hosts = hosts_of(stack.inventory)
    groups = {group: [h for h, v in hosts.items() if v["group"] == group] for group in GROUPS}
    assert {group: len(names) for group, names in groups.items()} == {
        group: SCALED.get(group, 1) for group in GROUPS
    }, groups
    assert sorted(groups["worker"]) == [f"{stack.name}-worker-1", f"{stack.name}-worker-2"]
    assert groups["queue"] == [f"{stack.name}-queue"]
    assert groups["restore"] == [f"{stack.name}-restore"]
    subnet = ipaddress.ip_network(stack.cidr)
    # Fixed addresses per tier: the queue at .21, the restore drill VM at .45,
    # workers from .151 (after app's .101-.150).
    assert hosts[f"{stack.name}-queue"]["private_ip"] == str(subnet[21])
    assert hosts[f"{stack.name}-restore"]["private_ip"] == str(subnet[45])
    assert hosts[f"{stack.name}-worker-1"]["private_ip"] == str(subnet[151])
    assert len({host_vars["private_ip"] for host_vars in hosts.values()}) == len(hosts)
    for name, host_vars in hosts.items():
        assert name.startswith(f"{stack.name}-")
        assert host_vars["ansible_host"] == host_vars["private_ip"]
        assert ipaddress.ip_address(host_vars["private_ip"]) in subnet
    inventory_vars = stack.inventory["all"]["vars"]
    assert inventory_vars["flaskfleet_environment"] == stack.name
    # The host's address on the bridge: the admin network the firewall lets SSH in from.
    assert inventory_vars["flaskfleet_admin_cidrs"] == f"{subnet[1]}/32"


def test_instances_run_systemd_on_the_stacks_own_network(stack):
    bridge = lxc_query(f"/1.0/networks/{stack.name}-br")
    gateway = ipaddress.ip_interface(bridge["config"]["ipv4.address"])
    assert gateway.network == ipaddress.ip_network(stack.cidr)
    for name, host_vars in hosts_of(stack.inventory).items():
        # --wait answers once boot has finished, but it has also exited 1 with no answer at
        # all (on a machine busy with another stack's bring-up): ask until it names a state.
        deadline = time.monotonic() + 180
        while True:
            state = run(
                ["lxc", "exec", name, "--", "systemctl", "is-system-running", "--wait"],
                timeout=180,
            ).stdout.strip()
            if state or time.monotonic() > deadline:
                break
            time.sleep(2)
        failed = run(["lxc", "exec", name, "--", "systemctl", "--failed", "--no-legend"])
        assert state in {"running", "degraded"}, f"{name}: {state!r}; failed units: {failed.stdout}"
        instance = lxc_query(f"/1.0/instances/{name}")
        assert instance["profiles"] == [f"{stack.name}-vm"]
        assert instance["expanded_devices"]["eth0"]["network"] == f"{stack.name}-br"
        addresses = lxc_query(f"/1.0/instances/{name}/state")["network"]["eth0"]["addresses"]
        inet = [a["address"] for a in addresses if a["family"] == "inet"]
        assert inet == [host_vars["private_ip"]], f"{name}: {addresses}"


def test_ansible_inventory_graph_shows_every_group(stack, inventory_dir):
    graph = ansible_inventory(inventory_dir, "--graph")
    for group in [*GROUPS, "postgres"]:
        assert f"@{group}:" in graph, graph
    for name in hosts_of(stack.inventory):
        assert name in graph, graph
    listed = json.loads(ansible_inventory(inventory_dir, "--list"))
    for name, host_vars in hosts_of(stack.inventory).items():
        seen = listed["_meta"]["hostvars"][name]
        assert seen["ansible_host"] == host_vars["private_ip"]
        assert seen["private_ip"] == host_vars["private_ip"]
        assert seen["ansible_connection"] == "ssh"
        assert seen["ansible_user"] == "admin"


def test_ansible_reaches_every_host_over_ssh_as_admin_with_sudo(stack, inventory_dir):
    """known_hosts comes from the host keys read through LXD, so SSH checks them strictly."""
    known_hosts = run(["bash", "scripts/known-hosts.sh", inventory_dir / "hosts.json"], timeout=600)
    assert known_hosts.returncode == 0, known_hosts.stderr
    (stack.ssh_dir / "known_hosts").write_text(known_hosts.stdout)
    assert len(known_hosts.stdout.splitlines()) == len(hosts_of(stack.inventory))
    result = run(
        [
            *(VENV_BIN / "ansible", "all", "-i", inventory_dir, "--become"),
            *("-e", f"flaskfleet_ssh_dir={stack.ssh_dir}"),
            *("-m", "ansible.builtin.command", "-a", "id -un"),
        ],
        env=ansible_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in hosts_of(stack.inventory):
        assert f"{name} | CHANGED | rc=0 >>\nroot" in result.stdout, result.stdout


def test_ssh_refuses_an_unknown_host_key(stack, inventory_dir):
    """A host whose key is not the one LXD reported is refused, not trusted on first use."""
    lb = f"{stack.name}-lb"
    lb_ip = hosts_of(stack.inventory)[lb]["private_ip"]
    impostor = stack.ssh_dir / "impostor_host_key"
    keygen = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", impostor])
    assert keygen.returncode == 0, keygen.stderr
    key_type, key = impostor.with_suffix(".pub").read_text().split()[:2]
    (stack.ssh_dir / "known_hosts").write_text(f"{lb_ip} {key_type} {key}\n")
    result = run(
        [
            *(VENV_BIN / "ansible", lb, "-i", inventory_dir),
            *("-e", f"flaskfleet_ssh_dir={stack.ssh_dir}"),
            *("-m", "ansible.builtin.ping"),
        ],
        # A fresh connection: the previous test's persistent one would skip the check.
        env={**ansible_env(), "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none"},
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "UNREACHABLE" in result.stdout, result.stdout
    # OpenSSH's own words under Ansible's ssh connection; Mitogen's strategy (ansible.cfg)
    # reports the same refusal in its words.
    refusals = (
        "Host key verification failed",
        "SSH reported an unrecognized or mismatching host key",
    )
    assert any(refusal in result.stdout + result.stderr for refusal in refusals), result.stdout


@pytest.mark.parametrize(
    ("tier", "device_name", "guest_port", "host_port"),
    [
        ("lb", "http", 80, "port"),
        ("monitor", "prometheus", 9090, "prometheus_port"),
        ("monitor", "alertmanager", 9093, "alertmanager_port"),
    ],
)
def test_published_ports_are_on_localhost_only(stack, tier, device_name, guest_port, host_port):
    """The lb's HTTP port and the monitor's Prometheus and Alertmanager ports
    reach the host's 127.0.0.1 and nothing else of the host."""
    host = f"{stack.name}-{tier}"
    host_ip = hosts_of(stack.inventory)[host]["private_ip"]
    port = getattr(stack, host_port)
    device = lxc_query(f"/1.0/instances/{host}")["devices"][device_name]
    assert device["type"] == "proxy"
    assert device["listen"] == f"tcp:127.0.0.1:{port}"
    assert device["connect"] == f"tcp:{host_ip}:{guest_port}"
    # A server on the host's private address and guest port answers on the host's 127.0.0.1.
    unit = f"pytest-{device_name}"
    started = run(
        [
            *("lxc", "exec", host, "--", "systemd-run", f"--unit={unit}"),
            *("python3", "-m", "http.server", str(guest_port), "--bind", host_ip),
            *("--directory", "/etc/systemd"),
        ]
    )
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"http://127.0.0.1:{port}/"
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
                    assert "system.conf" in response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        run(["lxc", "exec", host, "--", "systemctl", "stop", unit])


def test_restore_count_0_removes_only_the_restore_vm_and_leaves_an_empty_group(stack):
    """The restore drill VM comes and goes alone: restore_count=0 plans the
    deletion of <name>-restore and nothing else, and leaves the restore group
    in the inventory with no hosts (as worker_count=0 leaves the worker group)."""

    def plan(*variables):
        stack.tofu("plan", "-input=false", "-out=test.tfplan", *stack.vars, *variables)
        return json.loads(stack.tofu("show", "-json", "test.tfplan").stdout)

    def changes(plan):
        return {
            change["address"]: change["change"]["actions"]
            for change in plan["resource_changes"]
            if change["change"]["actions"] != ["no-op"]
        }

    unchanged = changes(plan())
    without = plan("-var", "restore_count=0")
    restore = f'module.tier["restore"].lxd_container.this["{stack.name}-restore"]'
    assert changes(without) == {**unchanged, restore: ["delete"]}
    inventory = without["planned_values"]["outputs"]["ansible_inventory"]["value"]
    assert inventory["all"]["children"]["restore"] == {"hosts": {}}


def test_destroy_leaves_no_container_or_network(stack):
    result = stack.destroy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.leftovers() == ([], [], []), "containers, networks, profiles left behind"
    link = run(["ip", "link", "show", f"{stack.name}-br"])
    assert link.returncode != 0, link.stdout
