"""State-dict checkpoints, written atomically with a checksum, loaded with ``weights_only=True``.

A checkpoint is a tree of dicts, lists, tensors and plain values (never a pickled object), so it loads on the
next torch without the code that wrote it. The file is ``MAGIC``, the SHA-256 of the rest, then the bytes of
``torch.save``: a truncated file or a flipped byte is refused by the checksum before torch reads anything, so a
resume never starts from silently wrong weights. Writing goes through ``platform/atomic.py`` (temporary file,
fsync, rename): a crash leaves the previous checkpoint or the new one, never half of one. ``load_checkpoint`` is
the one place that turns a checkpoint that cannot be used into a ``UserError`` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

from lifelong.platform.atomic import atomic_write_bytes
from lifelong.platform.errors import UserError, os_error_message

CHECKPOINT_NAME = "checkpoint.pt"
MAGIC = b"LIFELONG-CKPT-1\n"
_DIGEST = 32
_ZIP = b"PK\x03\x04"  # a plain torch.save file: checkpoints written before they carried a checksum
#: what every run checkpoint holds, with the type each must have
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "fingerprint": str, "completed": int, "accuracy_matrix": list, "wall_time_s": (int, float), "learner": dict,
}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save a state tree atomically with ``torch.save`` (tensors and plain containers only), behind its checksum."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(body).digest() + body)


def load_checkpoint(path: Path, required: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """The state tree in ``path``; a file that is missing, unreadable, empty, damaged, not a dict, holding a
    pickled object or lacking one of ``required`` (default ``REQUIRED``) raises a one-line ``UserError``."""
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(os_error_message(exc, "cannot read checkpoint", path)) from None
    if data.startswith(MAGIC):
        digest, body = data[len(MAGIC):len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST:]
        if hashlib.sha256(body).digest() != digest:
            raise UserError(f"checkpoint {path} is damaged: its SHA-256 does not match its content (truncated or "
                            "changed after it was written); start the run again without --resume")
    elif data.startswith(_ZIP):
        body = data
    elif not data:
        raise UserError(f"checkpoint {path} is empty (0 bytes); start the run again without --resume")
    else:
        raise UserError(f"checkpoint {path} is not a lifelong checkpoint (it starts with {data[:8]!r})")
    try:
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "something other than tensors and plain values"
        raise UserError(f"checkpoint {path} holds {what}; a checkpoint is never unpickled (torch weights_only), "
                        "so it is refused") from None
    except Exception as exc:  # torch reports a damaged archive as RuntimeError, EOFError, ValueError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint (a dict of state)")
    for key, kind in (REQUIRED if required is None else required).items():
        if key not in state:
            raise UserError(f"checkpoint {path} has no {key!r}; it was not written by `lifelong run`")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise UserError(f"checkpoint {path}: {key!r} is a {type(state[key]).__name__}, not what a run writes")
    return state


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
