"""Session fixtures: a private copy of terraform/ (so a test's state, lock files
and overrides never touch a developer's working tree) and a provider cache
shared by every `tofu init` of the session."""

import pytest
from helpers import Tofu, copy_terraform


@pytest.fixture(scope="session")
def tf_tree(tmp_path_factory):
    return copy_terraform(tmp_path_factory.mktemp("tf"))


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
