"""Helpers for the Terraform tests: a `tofu` runner configured as `make` runs it,
and inventory directories built the way `make tf-apply-<env>` builds them."""

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOFU = ROOT / ".tools" / "tofu"
VENV_BIN = ROOT / ".venv" / "bin"
# The inventory groups both environments write (modules/inventory checks the same set).
GROUPS = [
    "lb",
    "app",
    "worker",
    "redis",
    "queue",
    "postgres_primary",
    "postgres_replica",
    "monitor",
    "restore",
]


def run(cmd, *, timeout=600, **kwargs):
    """Run a command from the repository root, capturing its output."""
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(
        [str(part) for part in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def one_line(text):
    """Diagnostics are wrapped to the terminal's width: compare them unwrapped."""
    return " ".join(text.replace("│", " ").split())


def copy_terraform(base):
    """base/terraform: a copy of terraform/ without anything a developer's runs
    or settings left behind (state, overrides, tfvars, a backend.tf made from
    backend.tf.example), so tests always start from the committed code."""
    assert TOFU.exists(), "run `make setup` first: .tools/tofu is missing"
    # terraform/cli.tfrc finds the provider mirror at ../../../.tools/providers
    # from an environment directory: the copy gets .tools beside it too.
    (base / ".tools").symlink_to(ROOT / ".tools")
    tree = base / "terraform"
    shutil.copytree(
        ROOT / "terraform",
        tree,
        ignore=shutil.ignore_patterns(
            ".terraform",
            "*.tfstate",
            "*.tfstate.*",
            "*_override.tf",
            "*.tfvars",
            "*.auto.tfvars.json",
            "backend.tf",
        ),
    )
    return tree


class Tofu:
    """`tofu -chdir=<env dir>` from the repository root, as the Makefile runs it."""

    def __init__(self, env_dir, plugin_cache):
        self.env_dir = env_dir
        self.initialized = False
        self.env = {
            **os.environ,
            "TF_CLI_CONFIG_FILE": str(ROOT / "terraform" / "cli.tfrc"),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "TF_PLUGIN_CACHE_DIR": str(plugin_cache),
            "NO_COLOR": "1",
        }

    def __call__(self, *args, timeout=600, check=True):
        result = run(
            [TOFU, f"-chdir={self.env_dir}", *args, "-no-color"]
            if args[0] not in {"fmt", "version"}
            else [TOFU, f"-chdir={self.env_dir}", *args],
            env=self.env,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"tofu {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def init(self):
        """`tofu init` once per runner: later calls reuse the first."""
        if not self.initialized:
            self("init", "-input=false")
            self.initialized = True

    def inventory(self):
        return json.loads(self("output", "-json", "ansible_inventory").stdout)


def write_inventory(tmp_path, env, inventory):
    """inventories/<env>/ as `make` leaves it: committed group_vars plus hosts.json
    (the inventory object, or the text of `tofu output -json ansible_inventory`)."""
    inventory_dir = tmp_path / "inventories" / env
    shutil.copytree(
        ROOT / "inventories" / env, inventory_dir, ignore=shutil.ignore_patterns("hosts.json")
    )
    text = inventory if isinstance(inventory, str) else json.dumps(inventory, indent=2)
    (inventory_dir / "hosts.json").write_text(text)
    return inventory_dir


def ansible_env():
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }


def ansible_inventory(inventory_dir, *args):
    result = run([VENV_BIN / "ansible-inventory", "-i", inventory_dir, *args], env=ansible_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
