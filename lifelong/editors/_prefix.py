"""Skip the frozen decoder layers below an edit while it trains (shared by the editors, not a method).

Every editor here trains parameters (SoLA's LoRAs, GRACE's value, FT-L's weight) at one layer of the model's
editable stack (``adapters/lm/edit_io.py``: a causal LM's decoder layers, T5's encoder blocks, a classifier's encoder
layers) with the edit's prompt and target as the only input, so the layers below the first trained one see the same input and
the same weights at every training step: their output never changes. ``replay_frozen_layers`` memoises each of
those layers for the duration of one edit's training: the first forward runs them and keeps their output, later
forwards whose input is equal (``torch.equal``, a cheap check on ``[1, seq, d]``) get the kept tensor back
without computing. The kept output is the tensor the layer returned, so everything above receives the same
values and the training, its steps and its result are bit-identical; only the time changes. An input that
differs (another prompt, as SoLA's key lookup on the prompt alone) runs the layer and replaces the kept entry.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from lifelong.adapters.lm.edit_io import edit_layers, layer_index


class _Memo(nn.Module):
    """Stands in for one frozen decoder layer: returns the kept output when the hidden states are those kept."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.kept_in: torch.Tensor | None = None
        self.kept_out: Any = None

    def __getattr__(self, name: str) -> Any:  # attributes the model's loop reads (e.g. ``attention_type``)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        kept = self.kept_in
        if kept is not None and (hidden_states is kept or (
                hidden_states.shape == kept.shape and hidden_states.dtype == kept.dtype
                and hidden_states.device == kept.device and torch.equal(hidden_states, kept))):
            return self.kept_out
        out = self.layer(hidden_states, *args, **kwargs)
        self.kept_in, self.kept_out = hidden_states, out
        return out


def first_layer_index(model: nn.Module, layer: int) -> int:
    """``layer`` as a non-negative index into the model's editable layers (negative counts from the end)."""
    return layer_index(model, layer)


@contextlib.contextmanager
def replay_frozen_layers(model: nn.Module, first_trained: int) -> Iterator[None]:
    """Within the block, decoder layers ``0 .. first_trained - 1`` of ``model`` are memoised (see the module
    docstring). Nothing is memoised when one of their parameters requires a gradient (they are not frozen)."""
    _, layers = edit_layers(model)
    first_trained = first_layer_index(model, first_trained)
    below = list(layers[:first_trained])
    if not below or any(p.requires_grad for layer in below for p in layer.parameters()):
        yield
        return
    for i, layer in enumerate(below):
        layers[i] = _Memo(layer)
    try:
        yield
    finally:
        for i, layer in enumerate(below):
            layers[i] = layer
