"""Where and in what precision a model runs: ``device`` (resolved once, by one rule) and ``precision``.

``resolve_device``: ``auto`` takes CUDA when present, else the CPU; an unknown or absent device is refused with
the values allowed on this machine.

Mixed precision: one switch, ``precision``, for every training loop and every prediction.

- ``fp32`` (the default): no autocast, nothing changes.
- ``bf16``: ``torch.autocast`` to bfloat16; no loss scaling is needed (bfloat16 has float32's range).
- ``fp16``: ``torch.autocast`` to float16 with a ``GradScaler``, so small gradients do not underflow.

Master weights stay float32 in every mode: checkpoints, stored edit tensors and model identities are the same
whatever the precision, and a run can be resumed under another precision. Both reduced modes work on CPU (which
is how the tests exercise them) and on CUDA, where they pay off.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from lifelong.platform.config import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_precision(name: str) -> str:
    """``name`` itself if it is a known precision, else a ValueError that lists the allowed values."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def _dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(check_precision(precision))


@contextlib.contextmanager
def autocast(precision: str, device: Any) -> Iterator[None]:
    """Autocast to the precision's dtype on ``device``'s type; a no-op for ``fp32``."""
    import torch

    dtype = _dtype(precision)
    if dtype is None:
        yield
        return
    device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


class LossScaler:
    """``backward`` and ``step`` for one optimizer: through a GradScaler for fp16, plain otherwise."""

    def __init__(self, precision: str, device: Any) -> None:
        import torch

        device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
        self.enabled = check_precision(precision) == "fp16"
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.enabled)

    def backward(self, loss: Any, **kwargs: Any) -> None:
        self.scaler.scale(loss).backward(**kwargs)

    def step(self, optimizer: Any) -> None:
        """Unscale, skip the step if gradients overflowed (fp16 only), update the scale."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def unscale(self, optimizer: Any) -> None:
        """Bring gradients back to their true size before clipping them (a no-op without fp16)."""
        if self.enabled:
            self.scaler.unscale_(optimizer)


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available; allowed here: auto, cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name!r} does not exist; allowed here: auto, cpu, "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device
