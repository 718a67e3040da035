"""State-dict checkpoints, written atomically, loaded with ``weights_only=True``.

A checkpoint is a tree of dicts, lists, tensors and plain values (never a pickled object), so it loads on the
next torch without the code that wrote it. Writing goes through ``platform/atomic.py`` (temporary file, fsync,
rename): a crash leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from lifelong.platform.atomic import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save a state tree atomically with ``torch.save`` (tensors and plain containers only)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def config_fingerprint(config: dict[str, Any]) -> str:
    """A stable hash of a run's configuration, so a resume never mixes two different runs."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The seed of one training step, derived from the run seed: reseeding per step makes a resumed run
    draw the same random numbers as an uninterrupted one without saving generator states."""
    return int(hashlib.sha256(f"{seed}:{step}".encode()).hexdigest()[:8], 16)
