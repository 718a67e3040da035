"""Texts carried through the class-incremental engine as tensors: UTF-8 bytes, zero-padded to one width.

Why: the engine, its evaluation loop and the Avalanche strategies (replay buffers, EWC, joint) move inputs with
``x.to(device)`` and collate them with PyTorch's default collate, which only tensors survive. A text stream
(``split-wordnet-glosses``) therefore stores each input as a row of a ``uint8`` tensor ``(N, width)``: the
text's UTF-8 bytes, then zeros (byte 0 never occurs in text). The text models decode the rows back to strings
and tokenize them with their own tokenizer, so one stream serves MiniLM, SmolLM2 and the tiny test models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """``text``'s UTF-8 bytes, cut to at most ``max_bytes`` at a character boundary (never half a character)."""
    data = text.replace("\x00", " ").encode("utf-8")
    if len(data) <= max_bytes:
        return data
    return data[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")


def encode_texts(texts: Sequence[str], max_bytes: int = 512) -> "torch.Tensor":
    """A ``uint8`` tensor ``(len(texts), width)``: each row one text's bytes (cut at ``max_bytes``), zero-padded;
    ``width`` is the longest row, so short texts waste no memory."""
    import numpy as np
    import torch

    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    rows = [truncate_utf8(t, max_bytes) for t in texts]
    width = max((len(r) for r in rows), default=1) or 1
    out = np.zeros((len(rows), width), dtype=np.uint8)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    return torch.from_numpy(out)


def decode_texts(x: "torch.Tensor") -> list[str]:
    """The strings of a batch of byte rows (any integer dtype, any device); the inverse of :func:`encode_texts`."""
    import numpy as np

    if x.dim() != 2:
        raise ValueError(f"text batches are 2-D (batch, bytes); got shape {tuple(x.shape)}")
    rows = x.detach().to("cpu").numpy().astype(np.uint8)
    return [bytes(r).rstrip(b"\x00").decode("utf-8", errors="replace") for r in rows]
