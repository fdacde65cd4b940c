"""What `make setup` promises: a base image that boots systemd, and a Terraform
toolchain that resolves every provider the project uses with no registry."""

import os
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOFU = ROOT / ".tools" / "tofu"
SYSTEMD_CONTAINER_ARGS = [
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--stop-signal",
    "SIGRTMIN+3",
]


TOFU_ENV = {
    **os.environ,
    "TF_CLI_CONFIG_FILE": str(ROOT / "terraform" / "cli.tfrc"),
    "TF_IN_AUTOMATION": "1",
}


def run(*cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def wait_for_boot(container):
    """`systemctl is-system-running --wait` once systemd has started far enough to answer it.

    Right after `docker run` systemctl may find no /run/systemd/system yet (it then says
    "offline" with no error) or no bus to connect to; both only mean "ask again".
    """
    deadline = time.monotonic() + 60
    while True:
        state = run("docker", "exec", container, "systemctl", "is-system-running", "--wait")
        not_up_yet = state.stdout.strip() == "offline" or "Failed to connect to bus" in state.stderr
        if not not_up_yet or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


@pytest.fixture
def base_container():
    name = f"ff-foundation-{uuid.uuid4().hex[:8]}"
    started = run(
        "docker", "run", "-d", "--name", name, *SYSTEMD_CONTAINER_ARGS, "flaskfleet/base:current"
    )
    assert started.returncode == 0, started.stderr
    yield name
    run("docker", "rm", "-f", name)


def test_base_image_boots_systemd(base_container):
    state = wait_for_boot(base_container)
    failed = run("docker", "exec", base_container, "systemctl", "--failed", "--no-legend")
    assert state.stdout.strip() in {"running", "degraded"}, failed.stdout
    pid1 = run("docker", "exec", base_container, "cat", "/proc/1/comm")
    assert pid1.stdout.strip() == "systemd"


def test_base_image_has_what_ansible_and_ssh_need(base_container):
    wait_for_boot(base_container)
    probe = run(
        "docker",
        "exec",
        base_container,
        "sh",
        "-c",
        "python3 -c 'import apt; print(1)' && sudo -V >/dev/null && sshd -t "
        "&& systemctl is-active ssh",
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.split() == ["1", "active"]


def test_base_image_tag_is_the_recipe_content_version():
    tag = run("bash", str(ROOT / "scripts" / "build-base-image.sh"))
    assert tag.returncode == 0, tag.stderr
    image = tag.stdout.strip()
    label = run(
        "docker",
        "image",
        "inspect",
        "-f",
        '{{ index .Config.Labels "org.flaskfleet.recipe" }}',
        image,
    )
    assert image.split(":")[1] == label.stdout.strip()
    assert "docker import" not in tag.stderr, "an unchanged recipe must reuse the image"


def test_tofu_is_a_release_build():
    version = run(str(TOFU), "version", env=TOFU_ENV)
    assert version.returncode == 0, version.stderr
    first = version.stdout.splitlines()[0]
    assert first.startswith(("OpenTofu v", "Terraform v")) and "-dev" not in first


def test_providers_resolve_from_the_filesystem_mirror_only(tmp_path):
    # terraform/cli.tfrc names the mirror relative to a root module three levels
    # below the repository (terraform/environments/<env>), so the empty config
    # sits at the same depth below a directory that has the repository's .tools.
    (tmp_path / ".tools").symlink_to(ROOT / ".tools")
    config = tmp_path / "terraform" / "environments" / "empty"
    config.mkdir(parents=True)
    (config / "main.tf").write_text(
        textwrap.dedent("""
            terraform {
              required_providers {
                aws = { source = "hashicorp/aws", version = "3.39.0" }
                lxd = { source = "terraform-lxd/lxd", version = "1.5.0" }
              }
            }
        """)
    )
    init = run(str(TOFU), f"-chdir={config}", "init", "-input=false", env=TOFU_ENV)
    assert init.returncode == 0, init.stdout + init.stderr
    providers = run(str(TOFU), f"-chdir={config}", "providers", env=TOFU_ENV)
    assert providers.returncode == 0, providers.stderr
    assert "provider[registry.opentofu.org/hashicorp/aws] 3.39.0" in providers.stdout
    assert "provider[registry.opentofu.org/terraform-lxd/lxd] 1.5.0" in providers.stdout
