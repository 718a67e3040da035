"""State-dict checkpoints, written atomically with a checksum, loaded with ``weights_only=True``.

A checkpoint is a tree of dicts, lists, tensors and plain values (never a pickled object), so it loads on the
next torch without the code that wrote it. The file is ``MAGIC``, the SHA-256 of the rest, then the bytes of
``torch.save``: a truncated file or a flipped byte is refused by the checksum before torch reads anything, so a
resume never starts from silently wrong weights. Writing goes through ``platform/atomic.py`` (temporary file,
fsync, rename): a crash leaves the previous checkpoint or the new one, never half of one. ``load_checkpoint`` is
the one place that turns a checkpoint that cannot be used into a ``UserError`` naming the file and the problem.

``CheckpointWriter`` is how the runner saves one checkpoint per step without waiting for the disk: the state is
serialised at once (the tensors are still being trained), and checksum, write, fsync and rename go on in a
background thread while the next step trains. One write at a time, in order, so an older checkpoint never
replaces a newer one; a write's error comes out of the next ``submit`` or ``wait``. A crash while a write is under
way leaves the previous checkpoint (the rename is atomic), and a resume from it gives the same results as an
uninterrupted run, because every step is reseeded.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
import threading
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
    _write_body(path, serialise(payload))


def serialise(payload: dict[str, Any]) -> bytes:
    """The ``torch.save`` bytes of a state tree: a snapshot, so the tensors may change afterwards."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _write_body(path: Path, body: bytes) -> None:
    atomic_write_bytes(path, MAGIC + hashlib.sha256(body).digest() + body)


class CheckpointWriter:
    """Checkpoints written in a background thread, one at a time and in order (see the module docstring)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, payload: dict[str, Any]) -> None:
        """Serialise ``payload`` now and write it to ``path`` in the background, after the previous write; an
        error of the previous write is raised here (and this checkpoint is then not written)."""
        body = serialise(payload)
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(Path(path), body), name="lifelong-checkpoint")
        self._thread.start()

    def _write(self, path: Path, body: bytes) -> None:
        try:
            _write_body(path, body)
        except BaseException as exc:  # handed to the caller by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the write under way is on disk; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
