"""The plugin registry: one place that knows every strategy, editor, scorer and benchmark.

Learned from timm (``register`` on factories, ``create(name)``, ``list(pattern)``), PEFT (a config class that
carries its method's name) and pytest/pluggy (entry points, one broken plugin never breaks the run, a switch
to turn autoload off). The platform never imports a method by name: built-in plugins are the public modules of
the plugin packages (``BUILTIN_PACKAGES``: strategies, editors, scorers and their branches, benchmarks, spike encoders,
components), third-party plugins are entry points in the ``lifelong.plugins`` group, and both are imported
lazily on the first lookup.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import os
import pkgutil
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from lifelong.platform.config import build_config
from lifelong.platform.errors import UserError
from lifelong.platform.quiet import quiet_avalanche

#: ``component``: a training component a learner calls around its own loop (``incremental/learner.py``: ``Component``);
#: ``branch``: a side branch of a reward scorer (features and a text per (prompt, response); docs/reward.md)
#: ``encoder``: a spike encoder, waveforms to spike trains (``encoders/base.py``: ``SpikeEncoder``)
KINDS: tuple[str, ...] = ("strategy", "editor", "scorer", "benchmark", "component", "branch", "encoder")
#: what a benchmark's factory returns: a class-incremental stream (``run``, ``compare``) or preference pairs
#: (``reward train|eval``); the runner refuses a benchmark of the wrong kind by name
BENCHMARK_KINDS: tuple[str, ...] = ("stream", "preference-pairs", "detection")
ENTRY_POINT_GROUP = "lifelong.plugins"
DISABLE_AUTOLOAD_ENV = "LIFELONG_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PACKAGES: tuple[str, ...] = ("lifelong.benchmarks", "lifelong.components", "lifelong.strategies", "lifelong.editors",
                                     "lifelong.scorers", "lifelong.scorers.branches",
                                     "lifelong.encoders")
_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class RegistryError(UserError, ValueError):
    """A lookup or registration the registry cannot honour (unknown name, duplicate, bad kind)."""


@dataclass(frozen=True)
class Capabilities:
    """Typed flags the platform checks before it runs a plugin."""

    needs_task_labels: bool = False
    uses_replay_memory: bool = False
    supports_rollback: bool = False
    distributed_safe: bool = False
    #: a strategy that calls training components (``components=[...]``) and honours ``loss=tet``
    accepts_components: bool = False

    def as_dict(self) -> dict[str, bool]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PluginSpec:
    """Everything the registry knows about one plugin."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    summary: str
    capabilities: Capabilities
    source: str = "builtin"
    module: str = ""
    #: for benchmarks, one of ``BENCHMARK_KINDS``; empty for other kinds
    produces: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "summary": self.summary,
            "source": self.source,
            "module": self.module,
            "capabilities": self.capabilities.as_dict(),
            "config": self.config.__name__ if self.config else None,
            **({"produces": self.produces} if self.produces else {}),
        }


@dataclass
class PluginLoadError:
    """A plugin module or entry point that failed to import; reported, then skipped."""

    name: str
    source: str
    error: str


@dataclass
class _State:
    specs: dict[tuple[str, str], PluginSpec] = field(default_factory=dict)
    errors: list[PluginLoadError] = field(default_factory=list)
    loaded: bool = False
    loading_source: str = "builtin"


_state = _State()
_lock = threading.RLock()


def register(
    kind: str,
    name: str,
    *,
    config: type | None = None,
    summary: str = "",
    capabilities: Capabilities | dict[str, bool] | None = None,
    produces: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a factory or class under ``(kind, name)``.

    ``config`` is the dataclass the factory takes as its only argument; ``create`` builds it from keyword
    arguments so bad keys fail before any work starts. ``produces`` (benchmarks only) says what the factory
    returns, one of ``BENCHMARK_KINDS`` (default ``stream``).
    """
    if kind not in KINDS:
        raise RegistryError(f"unknown plugin kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    if not _NAME_RE.match(name):
        raise RegistryError(f"plugin name {name!r} is not kebab-case (lowercase letters, digits, '-')")
    if isinstance(capabilities, dict):
        capabilities = Capabilities(**capabilities)
    if kind == "benchmark":
        produces = produces or "stream"
        if produces not in BENCHMARK_KINDS:
            raise RegistryError(f"benchmark {name!r}: produces={produces!r} is not allowed; allowed: {', '.join(BENCHMARK_KINDS)}")
    elif produces:
        raise RegistryError(f"{kind} {name!r}: only benchmarks declare what they produce")

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        spec = PluginSpec(
            kind=kind,
            name=name,
            factory=factory,
            config=config,
            summary=summary or _first_line(factory.__doc__),
            capabilities=capabilities or Capabilities(),
            source=_state.loading_source,
            module=getattr(factory, "__module__", ""),
            produces=produces or "",
        )
        with _lock:
            existing = _state.specs.get((kind, name))
            if existing is not None and existing.module != spec.module:
                raise RegistryError(
                    f"{kind} {name!r} is already registered by {existing.module} ({existing.source})"
                )
            _state.specs[(kind, name)] = spec
        return factory

    return decorator


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if doc and doc.strip() else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r}) at import"
    return f"{type(exc).__name__}: {exc}"


def _load_isolated(name: str, source: str, load: Callable[[], Any]) -> None:
    """Run ``load`` (a plugin import) with ``source`` as the source of what it registers. A plugin that fails,
    even by ``sys.exit()`` (``SystemExit``), is recorded in the load errors and skipped, and every registration
    it made before failing is rolled back: a failed plugin leaves nothing registered. (Ctrl-C still stops.)"""
    with _lock:
        previous = _state.loading_source
        before = dict(_state.specs)
        _state.loading_source = source
        try:
            load()
        except (Exception, SystemExit) as exc:  # one broken plugin never breaks the run
            _state.specs.clear()
            _state.specs.update(before)
            _state.errors.append(PluginLoadError(name, source, _describe(exc)))
        finally:
            _state.loading_source = previous


def _import_isolated(module: str, source: str) -> None:
    _load_isolated(module, source, lambda: importlib.import_module(module))


def _builtin_modules() -> Iterable[str]:
    for package_name in BUILTIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                yield f"{package_name}.{info.name}"


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"

        def load(ep: Any = ep) -> None:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()  # an entry point may name a setup function instead of a module

        _load_isolated(ep.name, dist, load)


def ensure_loaded() -> None:
    """Import the built-in plugin modules and, unless disabled, the installed entry points (once)."""
    with _lock:
        if _state.loaded:
            return
        _state.loaded = True

        with quiet_avalanche():
            for module in _builtin_modules():
                _import_isolated(module, "builtin")
            if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip() not in ("1", "true", "yes"):
                _load_entry_points()


def load_errors() -> list[PluginLoadError]:
    """Plugins that failed to import, with their error; they are skipped, never fatal."""
    ensure_loaded()
    return list(_state.errors)


def get(kind: str, name: str) -> PluginSpec:
    """Look a plugin up; an unknown name raises an error that names close matches."""
    if kind not in KINDS:
        raise RegistryError(f"unknown plugin kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    ensure_loaded()
    spec = _state.specs.get((kind, name))
    if spec is None:
        known = sorted(n for k, n in _state.specs if k == kind)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        broken = [e for e in _state.errors if name.replace("-", "_") in e.name]
        extra = f" (plugin {broken[0].name} failed to load: {broken[0].error})" if broken else ""
        raise RegistryError(f"unknown {kind} {name!r}; {hint}known: {', '.join(known) or 'none'}{extra}")
    return spec


def create(kind: str, name: str, /, **config: Any) -> Any:
    """Build the plugin ``name`` of ``kind`` from keyword config (validated against its config class)."""
    spec = get(kind, name)
    if spec.config is None:
        return spec.factory(**config)

    return spec.factory(build_config(spec.config, config))


def list_plugins(kind: str | None = None, pattern: str = "*") -> list[PluginSpec]:
    """Registered plugins, optionally of one kind and matching a glob ``pattern``, sorted by kind and name."""
    if kind is not None and kind not in KINDS:
        raise RegistryError(f"unknown plugin kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    ensure_loaded()
    return sorted(
        (s for (k, n), s in _state.specs.items() if (kind is None or k == kind) and fnmatch.fnmatch(n, pattern)),
        key=lambda s: (KINDS.index(s.kind), s.name),
    )

