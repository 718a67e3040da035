import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from lifelong.platform.config import ConfigError
from lifelong.platform.registry import Capabilities, RegistryError, create, get, list_plugins, register


@dataclass
class _EchoConfig:
    size: int = 3
    label: str = "x"


@register("scorer", "test-echo", config=_EchoConfig, summary="echo config", capabilities={"supports_rollback": True})
def _echo(config: _EchoConfig) -> _EchoConfig:
    return config


def test_create_builds_the_typed_config():
    made = create("scorer", "test-echo", size=5)
    assert made == _EchoConfig(size=5, label="x")
    assert get("scorer", "test-echo").capabilities == Capabilities(supports_rollback=True)


def test_create_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown config key 'sise'.*allowed keys: size, label"):
        create("scorer", "test-echo", sise=5)
    with pytest.raises(ConfigError, match="size: expected an integer"):
        create("scorer", "test-echo", size="five")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(RegistryError, match="did you mean replay"):
        get("strategy", "replya")


def test_bad_kind_and_bad_name_are_refused():
    with pytest.raises(RegistryError, match="allowed kinds"):
        register("model", "x")
    with pytest.raises(RegistryError, match="kebab-case"):
        register("strategy", "Not_Kebab")


def test_duplicate_name_from_another_module_is_refused():
    def other():
        pass

    other.__module__ = "somewhere.else"
    with pytest.raises(RegistryError, match="already registered"):
        register("scorer", "test-echo")(other)


def test_listing_by_kind_and_pattern():
    names = [s.name for s in list_plugins("strategy")]
    assert {"naive", "joint", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er"} <= set(names)
    assert [s.name for s in list_plugins("strategy", "dark*")] == ["dark-er"]
    assert all(s.kind == "benchmark" for s in list_plugins("benchmark"))
    assert get("strategy", "replay").capabilities.uses_replay_memory
    assert get("strategy", "naive").source == "builtin"


def test_import_lifelong_is_light():
    code = "import sys, lifelong; assert 'torch' not in sys.modules, 'torch imported'; print(lifelong.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _broken_plugin_env(tmp_path):
    """A distribution on sys.path whose entry point fails to import, as pip would have installed it."""
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lifelong.plugins]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('this plugin is broken')\n")
    return {"PYTHONPATH": str(tmp_path)}


def test_a_broken_plugin_is_reported_and_skipped(tmp_path, cli):
    result = cli("plugins", "list", "--json", env=_broken_plugin_env(tmp_path))
    assert result.code == 0
    payload = json.loads(result.stdout)
    assert any(p["name"] == "naive" for p in payload["plugins"])
    assert payload["errors"] == [{"name": "broken", "source": "broken-plugin", "error": "RuntimeError: this plugin is broken"}]


def test_autoload_can_be_switched_off(tmp_path, cli):
    env = {**_broken_plugin_env(tmp_path), "LIFELONG_DISABLE_PLUGIN_AUTOLOAD": "1"}
    payload = json.loads(cli("plugins", "list", "--json", env=env).stdout)
    assert payload["errors"] == []
    assert any(p["name"] == "naive" for p in payload["plugins"])  # built-ins still load


def test_the_component_kind_lists_the_training_components():
    names = {s.name for s in list_plugins("component")}
    assert {"kd", "esl", "rkd"} <= names
    assert all(s.module.startswith("lifelong.components.") for s in list_plugins("component") if s.source == "builtin")
    takers = {s.name for s in list_plugins("strategy") if s.capabilities.accepts_components}
    assert {"naive", "replay", "der", "alade-snn"} <= takers and "lwf" not in takers


def test_the_branch_kind_lists_the_reward_side_branches():
    names = {s.name for s in list_plugins("branch")}
    assert {"semantic", "fact-check", "style", "fluency", "quality"} <= names
    assert all(s.config is not None for s in list_plugins("branch") if s.source == "builtin")
    with pytest.raises(RegistryError, match="unknown branch 'nope'"):
        get("branch", "nope")
