"""Avalanche 0.6.0 is noisy on import and during training; this hides what a user cannot act on."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator


@contextlib.contextmanager
def quiet_avalanche() -> Iterator[None]:
    """Hide Avalanche 0.6.0's own noise (no-logger notices, its deprecations, the optional QP solver notice)."""
    shown = warnings.showwarning

    def show(message: Any, category: type, filename: str, *args: Any, **kwargs: Any) -> None:
        # Avalanche's @deprecated re-enables its own warnings inside the call, past any filter set here
        if "avalanche" in filename or "qpsolvers" in filename:
            return
        shown(message, category, filename, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="No loggers specified")
        warnings.filterwarnings("ignore", message="no QP solver found")
        yield


@contextlib.contextmanager
def quiet_loading_bars() -> Iterator[None]:
    """Hide transformers' per-load progress bars ("Loading weights", one line per model load) inside: a load from a
    local folder takes seconds, and the bars were printed even by quiet commands and ``--json`` output. The state
    the caller had is restored after. (The one-time GGUF conversion keeps its bar: it is a long wait.)"""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
