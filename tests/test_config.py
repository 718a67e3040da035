from dataclasses import dataclass, field
from typing import Literal

import pytest

from lifelong.platform.config import ConfigError, build_config, load_yaml, parse_overrides


@dataclass
class Inner:
    rank: int = 4


@dataclass
class Outer:
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"
    order: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    name: str | None = None


def test_overrides_parse_nested_keys_and_yaml_scalars():
    assert parse_overrides(["a.b=1", "c=true", "d=[1, 2]", "e=hello", "f=1e-3"]) == {
        "a": {"b": 1}, "c": True, "d": [1, 2], "e": "hello", "f": 0.001}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_build_config_coerces_and_validates():
    cfg = build_config(Outer, {"lr": 1, "inner": {"rank": 8}, "order": [3, 1]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.inner.rank == 8 and cfg.order == [3, 1]
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rnak' for Inner; allowed keys: rank"):
        build_config(Outer, {"inner": {"rnak": 8}})
    with pytest.raises(ConfigError, match=r"mode: 'c' is not allowed; allowed values: 'a', 'b'"):
        build_config(Outer, {"mode": "c"})
    with pytest.raises(ConfigError, match=r"order\[1\]: expected an integer"):
        build_config(Outer, {"order": [1, "x"]})
    with pytest.raises(ConfigError, match="lr: expected a number"):
        build_config(Outer, {"lr": True})


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("strategy: naive\nseed: [1, 2\nother: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: malformed YAML"):
        load_yaml(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")
