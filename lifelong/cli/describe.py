"""What ``lifelong plugins show NAME`` prints: one plugin's summary, source, capabilities and config fields (type,
default, rule and help).

A field's help is its ``metadata["help"]`` when it has one, else the ``#:`` comment lines just above it in the config
class (the Sphinx attribute-doc convention the code base already uses), else the comment at the end of its line.
Comments are read with ``tokenize`` from the class's source, so a ``#`` inside a string is never taken for one;
a class without source (built at run time) simply has no help text.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing
from typing import Any

from lifelong.platform.config import field_rules
from lifelong.platform.registry import PluginSpec


def field_help(cls: type) -> dict[str, str]:
    """The help text of every field of dataclass ``cls`` that has one, by field name (base classes included)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            found.update(_comments(klass))
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            found[f.name] = str(f.metadata["help"])
    return found


def _comments(klass: type) -> dict[str, str]:
    """``#:`` comments above, or a comment after, each annotated field of ``klass``'s own body."""
    try:
        lines, _ = inspect.getsourcelines(klass)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string
    except (tokenize.TokenError, SyntaxError):
        return {}
    own = set(klass.__dict__.get("__annotations__", {}))
    out: dict[str, str] = {}
    above: list[str] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#:"):
            above.append(stripped[2:].strip())
            continue
        name = stripped.split(":", 1)[0].strip() if ":" in stripped else ""
        if name in own and name.isidentifier():
            trailing = comments.get(number, "")
            text = " ".join(above) or (trailing.lstrip("#").strip() if not stripped.startswith("#") else "")
            if text:
                out[name] = text
        above = []
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def describe(spec: PluginSpec) -> dict[str, Any]:
    """A plugin as plain data (what ``plugins show --json`` prints)."""
    fields: list[dict[str, Any]] = []
    if spec.config is not None and dataclasses.is_dataclass(spec.config):
        helps = field_help(spec.config)
        rules = field_rules(spec.config)
        hints = typing.get_type_hints(spec.config, include_extras=True)
        for f in dataclasses.fields(spec.config):
            rule = rules.get(f.name)
            fields.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)), "default": _default(f),
                           "rule": rule.describe(f.name) if rule is not None else None,
                           "help": helps.get(f.name, "")})
    doc = (inspect.getdoc(spec.config) or "") if spec.config is not None else ""
    if spec.config is not None and doc.startswith(f"{spec.config.__name__}("):
        doc = ""  # the signature dataclasses writes for a class without a docstring
    return {**spec.as_dict(), "config_doc": doc, "fields": fields}


def format_description(d: dict[str, Any]) -> str:
    """The text of ``plugins show``: a header, the summary, capabilities, then one line per config field."""
    caps = d["capabilities"]
    lines = [f"{d['kind']} {d['name']}  (source: {d['source']}, module: {d['module']})",
             f"  {d['summary']}" if d["summary"] else "  (no summary)"]
    if d.get("produces"):
        lines.append(f"  produces: {d['produces']}")
    lines.append("  capabilities: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in caps.items()))
    if not d["config"]:
        lines.append("  config: none (it takes no options)")
        return "\n".join(lines)
    first = d["config_doc"].split("\n\n")[0].replace("\n", " ") if d["config_doc"] else ""
    lines.append(f"  config {d['config']}" + (f": {first}" if first else "") + "  (--set KEY=VALUE)")
    width = max((len(f["name"]) for f in d["fields"]), default=0)
    for f in d["fields"]:
        rule = f"  [{f['rule']}]" if f["rule"] else ""
        text = f"  {f['help']}" if f["help"] else ""
        lines.append(f"    {f['name']:<{width}}  {f['type']} = {f['default']!r}{rule}{text}")
    return "\n".join(lines)
