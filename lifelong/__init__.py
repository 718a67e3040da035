"""lifelong: continual learning and lifelong model editing on one plugin registry.

The public API is imported lazily: ``import lifelong`` loads no torch-heavy module; the first use of a name
below imports what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API: dict[str, str] = {
    "register": "lifelong.platform.registry",
    "create": "lifelong.platform.registry",
    "list_plugins": "lifelong.platform.registry",
    "Capabilities": "lifelong.platform.registry",
    "Learner": "lifelong.incremental.learner",
    "StrategyConfig": "lifelong.incremental.learner",
    "run_experiment": "lifelong.incremental.run",
    "compare": "lifelong.incremental.compare",
    "cil_metrics": "lifelong.incremental.metrics",
    "EditStore": "lifelong.editing.store",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'lifelong' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
