"""Routed LoRA: many frozen per-edit LoRA modules on the same layers, switched on per sequence by key look-up.

This is the model side of SoLA (``editors/sola.py``). A ``RoutedLoRA`` wraps chosen ``nn.Linear`` modules
of a causal LM. The first wrapped module in forward order takes the routing decision: at the query token of each
sequence (the last prompt token) it subtracts the centre from its input and asks ``router`` for the nearest key
(``router.nearest(queries) -> (cosine distance, edit id)`` per row, float32 numpy on the CPU; in ``lifelong``
this is the edit store's faiss index, ``editing/router.py``, which normalises the queries), and picks that edit
if ``1 - cos <= threshold`` and the edit's LoRA is loaded here. The decision (one slot per sequence, or none) is
shared by every wrapped module in that forward pass and, during generation with a KV cache, by the following
one-token steps. The keys live in the router, not here: ``add`` and ``remove`` only handle LoRA weights.

Sequences that route to an edit get ``base(x) + scale * B_i A_i x`` for their own edit ``i``: the LoRA weights of
all routed sequences are gathered and applied in one batched product, never in a loop over edits. Sequences
that route nowhere keep ``base(x)`` untouched, so with no match the logits are the base model's bit for bit.

Training mode (``train_adapter``) applies one fresh trainable LoRA to every sequence, against the frozen base.

The centre and the stacked LoRA weights are float32 on the wrapped model's device (``add`` moves what it is
given there); the query vectors of a decision (one per sequence) go to the CPU for the look-up, once per
``generate`` call or teacher-forced batch. ``trained_weights`` hands back CPU copies for storage.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class Decision:
    """Per-sequence routing result: ``slots[b]`` is the edit slot of sequence b, or -1; ``ids`` the edit ids."""

    slots: torch.Tensor
    ids: list[int | None]
    similarity: torch.Tensor


class _LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus the stacked LoRA weights of every edit, and optionally one trainable LoRA."""

    def __init__(self, base: nn.Linear, name: str, owner: "RoutedLoRA", is_router: bool) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.is_router = is_router
        self._owner = [owner]  # a list so the owner is not registered as a submodule (no cycle)
        self.A = torch.zeros(0, owner.rank, base.in_features, device=base.weight.device)
        self.B = torch.zeros(0, base.out_features, owner.rank, device=base.weight.device)
        self.train_A: nn.Parameter | None = None
        self.train_B: nn.Parameter | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        if self.is_router:
            owner._route(x)
        out = self.base(x)
        if self.train_A is not None:
            return out + owner.scale * ((x @ self.train_A.t()) @ self.train_B.t())
        dec = owner._decision
        if dec is None or len(self.A) == 0:
            return out
        rows = (dec.slots >= 0).nonzero().flatten()
        if rows.numel() == 0:
            return out
        slots = dec.slots[rows]
        a = self.A[slots].to(x.dtype)  # (m, r, in)
        b = self.B[slots].to(x.dtype)  # (m, out, r)
        delta = torch.bmm(torch.bmm(x[rows], a.transpose(1, 2)), b.transpose(1, 2)) * owner.scale
        out = out.clone()
        out[rows] = out[rows] + delta
        return out


class RoutedLoRA:
    """Wraps ``module_names`` of ``model`` with routed LoRA; holds the LoRA slots, the router and the decision."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, rank: int, alpha: float, threshold: float,
                 centre: torch.Tensor | None = None, router: Any = None) -> None:
        if not names:
            raise ValueError("RoutedLoRA needs at least one module to wrap")
        self.model = model
        self.rank = int(rank)
        self.scale = float(alpha) / float(rank)
        self.threshold = float(threshold)
        self.names = list(names)
        self.wrappers: list[_LoRALinear] = []
        for i, name in enumerate(self.names):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            base = getattr(parent, child)
            if isinstance(base, _LoRALinear):
                raise ValueError(f"{name} is already wrapped")
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{name} is a {type(base).__name__}, not nn.Linear")
            w = _LoRALinear(base, name, self, is_router=(i == 0))
            setattr(parent, child, w)
            self.wrappers.append(w)
        self.device = self.wrappers[0].base.weight.device
        # subtracted from every query before the look-up (the stored keys were centred the same way)
        self.centre = centre
        #: the key index (``nearest(queries) -> (distances, ids)``); None routes nothing
        self.router = router
        self.slot_ids: list[int] = []  # slot -> edit id
        self.slot_of: dict[int, int] = {}  # edit id -> slot of the stacked LoRA weights
        self._decision: Decision | None = None
        self._query_index: torch.Tensor | None = None
        self._held = False
        self._capture: list[torch.Tensor] | None = None
        self.last_decision: Decision | None = None

    @property
    def centre(self) -> torch.Tensor | None:
        return self._centre

    @centre.setter
    def centre(self, value: torch.Tensor | None) -> None:
        self._centre = value.detach().float().to(self.device) if value is not None else None

    # ------------------------------------------------------------------ routing
    def _route(self, x: torch.Tensor) -> None:
        if self._capture is not None:
            self._capture.append(self._query(x).detach())
        bsz, seq = x.shape[0], x.shape[1]
        dec = self._decision
        # Inside a session the first decision holds for every later forward (generation steps); outside one,
        # a one-token forward right after a decision for the same batch is taken as a KV-cache continuation.
        if dec is not None and len(dec.ids) == bsz and (self._held or seq == 1):
            return
        self._decision = self._decide(x)
        self.last_decision = self._decision

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        if self._query_index is not None:
            idx = self._query_index.to(x.device).clamp(max=x.shape[1] - 1)
            return x[torch.arange(x.shape[0], device=x.device), idx]
        return x[:, -1]

    def _decide(self, x: torch.Tensor) -> Decision:
        bsz = x.shape[0]
        router = self.router
        if not self.slot_ids or router is None or len(router) == 0 or self.wrappers[0].train_A is not None:
            return Decision(torch.full((bsz,), -1, dtype=torch.long, device=x.device), [None] * bsz,
                            torch.full((bsz,), float("nan")))
        q = self._query(x).float()
        if self.centre is not None:
            q = q - self.centre
        dist, ids = router.nearest(q.detach().cpu().numpy())  # ties go to the newest edit (the router's rule)
        slots_l = [self.slot_of.get(int(i), -1) if d <= self.threshold else -1 for d, i in zip(dist.tolist(), ids.tolist())]
        slots = torch.tensor(slots_l, dtype=torch.long, device=x.device)
        ids_l = [self.slot_ids[s] if s >= 0 else None for s in slots_l]
        return Decision(slots, ids_l, torch.from_numpy(1.0 - np.asarray(dist, dtype=np.float32)))

    @contextlib.contextmanager
    def session(self, query_index: torch.Tensor | None = None) -> Iterator["RoutedLoRA"]:
        """One routing decision for the whole block (a ``generate`` call or a teacher-forced batch).

        ``query_index[b]`` is the position of sequence b's last prompt token; without it the last position of the
        first forward is used (left-padded prompts).
        """
        self._decision, self._query_index, self._held = None, query_index, True
        try:
            yield self
        finally:
            self._decision, self._query_index, self._held = None, None, False

    @contextlib.contextmanager
    def capture_keys(self, query_index: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
        """Collect the router's raw query vectors (input of the first wrapped module) for each forward."""
        self._capture = []
        prev = self._query_index
        self._query_index = query_index
        try:
            yield self._capture
        finally:
            self._capture, self._query_index = None, prev

    # ------------------------------------------------------------------ edits
    def add(self, edit_id: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add one frozen edit's LoRA: for each wrapped module name, its ``(A, B)`` (its key goes to the router)."""
        if int(edit_id) in self.slot_of:
            raise ValueError(f"edit {edit_id} is already loaded")
        for w in self.wrappers:
            if w.name not in weights:
                raise ValueError(f"edit {edit_id} has no LoRA weights for {w.name}")
        for w in self.wrappers:
            a, b = weights[w.name]
            w.A = torch.cat([w.A, a.detach().float().to(self.device)[None]])
            w.B = torch.cat([w.B, b.detach().float().to(self.device)[None]])
        self.slot_of[int(edit_id)] = len(self.slot_ids)
        self.slot_ids.append(int(edit_id))
        self._decision = None

    def remove(self, edit_ids: Sequence[int]) -> None:
        """Drop edits' LoRA weights; inputs routed to them get the base model's outputs back."""
        gone = {int(i) for i in edit_ids}
        keep_slots = [s for s, eid in enumerate(self.slot_ids) if eid not in gone]
        if len(keep_slots) == len(self.slot_ids):
            return
        for w in self.wrappers:
            w.A, w.B = w.A[keep_slots], w.B[keep_slots]
        self.slot_ids = [self.slot_ids[s] for s in keep_slots]
        self.slot_of = {eid: s for s, eid in enumerate(self.slot_ids)}
        self._decision = None

    def clear(self) -> None:
        self.remove(list(self.slot_ids))

    # ------------------------------------------------------------------ training one new edit
    @contextlib.contextmanager
    def train_adapter(self, generator: torch.Generator | None = None) -> Iterator[list[nn.Parameter]]:
        """A fresh trainable LoRA on every wrapped module (A Gaussian-like Kaiming init, B zero), on for all inputs."""
        params: list[nn.Parameter] = []
        for w in self.wrappers:
            a = torch.empty(self.rank, w.in_features)
            bound = 1.0 / math.sqrt(w.in_features)
            a.uniform_(-bound, bound, generator=generator)
            dev = w.base.weight.device
            w.train_A = nn.Parameter(a.to(dev))
            w.train_B = nn.Parameter(torch.zeros(w.out_features, self.rank, device=dev))
            params += [w.train_A, w.train_B]
        self._decision = None
        try:
            yield params
        finally:
            for w in self.wrappers:
                w.train_A = w.train_B = None

    def trained_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """CPU copies of the trained ``(A, B)`` of each wrapped module (what the store keeps)."""
        return {w.name: (w.train_A.detach().cpu().clone(), w.train_B.detach().cpu().clone()) for w in self.wrappers
                if w.train_A is not None}

    def unwrap(self) -> None:
        """Put the original modules back."""
        for w in self.wrappers:
            parent_name, _, child = w.name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, w.base)
        self.wrappers = []
