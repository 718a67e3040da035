"""Typed configs: dataclasses built from YAML files and ``key=value`` overrides, with errors that name the field.

Every plugin declares a dataclass; ``build_config`` turns a plain dict into it, rejecting unknown keys (and
naming the allowed ones), values of the wrong type and values out of range before any work starts.

Ranges (``Rule``) come from three places, checked in this order for every field of every config:

1. the field's own rule: ``dataclasses.field(default=..., metadata={"rule": Rule(low=0)})`` or
   ``Annotated[float, Rule(low=0)]``;
2. otherwise ``SHARED_RULES``, by field name, for the settings every learner shares (lr, momentum,
   weight_decay, epochs, batch sizes, mem_size, seed), so a third-party plugin's ``lr`` is checked like a
   built-in one without declaring anything;
3. every float (and every float in a list) must be finite: NaN and ±inf are refused unless the field's rule
   says ``finite=False``.

Then the config's own ``validate()`` runs (cross-field checks).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar, Union

from lifelong.platform.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config value, key or file that cannot be used; the message names the field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """The allowed values of one numeric field: ``low``/``high`` bounds (``None``: unbounded), each inclusive
    unless ``low_open``/``high_open``; ``finite=False`` lets the field take NaN and ±inf."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True

    def describe(self, name: str) -> str:
        """The allowed range in words: ``0 <= momentum < 1``, ``lr > 0``, ``a finite number``."""
        if self.low is not None and self.high is not None:
            text = (f"{_num(self.low)} {'<' if self.low_open else '<='} {name} "
                    f"{'<' if self.high_open else '<='} {_num(self.high)}")
        elif self.low is not None:
            text = f"{name} {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{name} {'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            return "a finite number" if self.finite else "any number"
        return text

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return not self.finite
        if isinstance(value, float) and math.isinf(value) and self.finite:
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(x)


#: The settings every learner shares, checked by name in any plugin config that has them (third-party ones
#: included) unless the field declares its own ``Rule``. docs/reliability.md lists the same table.
SHARED_RULES: dict[str, Rule] = {
    "lr": Rule(low=0, low_open=True),
    "momentum": Rule(low=0, high=1, high_open=True),
    "weight_decay": Rule(low=0),
    "epochs": Rule(low=1),
    "batch_size": Rule(low=1),
    "eval_batch_size": Rule(low=1),
    "mem_size": Rule(low=0),
    # numpy's RandomState and scikit-learn's random_state take 0 .. 2**32-1, the narrowest of the RNGs a run seeds
    "seed": Rule(low=0, high=2**32 - 1),
}


def field_rules(cls: type) -> dict[str, Rule | None]:
    """The rule of every field of a config class: its own (metadata or ``Annotated``), else the shared one for
    its name, else none (then only the finiteness of floats is checked)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    rules: dict[str, Rule | None] = {}
    for f in dataclasses.fields(cls):
        own = [x for x in getattr(hints.get(f.name), "__metadata__", ()) if isinstance(x, Rule)]
        rules[f.name] = f.metadata.get("rule") or (own[0] if own else SHARED_RULES.get(f.name))
    return rules


def check_rules(config: Any, prefix: str = "") -> None:
    """Refuse a field value outside its ``Rule``, and any non-finite float the rule does not allow, with a
    ``ConfigError`` naming the field, the value and the allowed range."""
    for name, rule in field_rules(type(config)).items():
        _check_value(getattr(config, name), rule, f"{prefix}{name}", name)


def _check_value(value: Any, rule: Rule | None, where: str, name: str) -> None:
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, rule, f"{where}[{i}]", name)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    rule = rule or Rule()
    if not rule.allows(value):
        allowed = rule.describe(name)
        if isinstance(value, float) and rule.finite and allowed != "a finite number":
            allowed += ", finite"
        raise ConfigError(f"{where}: {value!r} is out of range; allowed: {allowed}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow the usual lossless conversions (int->float)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, prefix=f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise ConfigError(f"{where}: {str(value)[:20]}... is too large for a number") from None
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def field_names(cls: type) -> list[str]:
    """The keys a config class accepts."""
    return [f.name for f in dataclasses.fields(cls)]


def build_config(cls: type[T], values: Mapping[str, Any] | None = None, *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``values``; unknown keys and wrong types raise ``ConfigError``."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    allowed = field_names(cls)
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}; allowed keys: {', '.join(allowed)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    return validate_config(obj, prefix.rstrip(".") or cls.__name__, prefix=prefix)


def validate_config(config: T, where: str = "", *, prefix: str | None = None) -> T:
    """Check every field against its ``Rule`` (fields named ``{prefix}name``, default ``{where}.name``), then
    run the config's ``validate()`` (the one validation convention: it raises ``ValueError`` for a value it
    cannot use); the error becomes a ``ConfigError`` prefixed with ``where`` (default: the class name)."""
    if dataclasses.is_dataclass(config):
        check_rules(config, prefix if prefix is not None else (f"{where}." if where else ""))
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{where or type(config).__name__}: {exc}") from None
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (nested dataclasses and tuples included)."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(config)


def parse_scalar(text: str) -> Any:
    """Parse one ``--set`` value the way YAML would (numbers, booleans, lists, null, strings)."""
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a user means the number
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, _, raw = pair.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set: malformed key in {pair!r}")
        set_nested(result, key.split("."), parse_scalar(raw))
    return result


def set_nested(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(path)!r}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` laid over ``base``, recursively for nested mappings."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; a missing file or malformed YAML raises ``ConfigError`` with file and line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold one object (a model's or an adapter's ``config.json``); unreadable, not UTF-8,
    invalid, nested past the parser (``RecursionError``) or not an object is one ``UserError`` naming the file."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data
