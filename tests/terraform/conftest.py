"""Session fixtures: a private copy of terraform/ (so a test's state, lock files
and overrides never touch a developer's working tree) and a provider cache
shared by every `tofu init` of the session."""

import shutil

import pytest
from helpers import ROOT, TOFU, Tofu


@pytest.fixture(scope="session")
def tf_tree(tmp_path_factory):
    """A copy of terraform/ without anything a developer's runs left behind."""
    assert TOFU.exists(), "run `make setup` first: .tools/tofu is missing"
    base = tmp_path_factory.mktemp("tf")
    # terraform/cli.tfrc finds the provider mirror at ../../../.tools/providers
    # from an environment directory: the copy gets .tools beside it too.
    (base / ".tools").symlink_to(ROOT / ".tools")
    tree = base / "terraform"
    shutil.copytree(
        ROOT / "terraform",
        tree,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "*_override.tf"),
    )
    return tree


@pytest.fixture(scope="session")
def plugin_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-cache")


@pytest.fixture(scope="session")
def tofu_for(tf_tree, plugin_cache):
    """tofu_for("local") -> a Tofu for that environment's copy, one per session."""
    runners = {}

    def make(env):
        if env not in runners:
            runners[env] = Tofu(tf_tree / "environments" / env, plugin_cache)
        return runners[env]

    return make
