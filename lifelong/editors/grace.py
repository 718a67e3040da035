"""GRACE: lifelong model editing with a discrete key-value codebook and deferral radii (Hartvigsen et al.,
NeurIPS 2023; reference code Thartvigsen/GRACE, port in EasyEdit). A baseline for SoLA.

Taken from the paper: one wrapped layer; the key is that layer's input at the last prompt token; codebook
entries hold (key, value, radius ε, label); a value is a vector the size of the layer output, initialised to the
layer's output there and trained with Adam at lr 1.0 on the model's own loss for at most ``max_steps`` steps; a
new key farther than ``ε_init + ε_nearest`` opens an entry, a closer one with the same label grows the nearest
radius to the distance, a closer one with another label opens an entry and shrinks both radii to half the
distance. At inference the nearest key within its radius replaces the layer output; otherwise the base output
passes through unchanged.

Where this module departs or fills gaps: (1) the codebook is not mutated in place but *replayed* from the
store's active edits in the order they were applied, so rolling an edit back removes exactly its entry (or its
radius expansion) and leaves the codebook as if it had never been applied — the bookkeeping EasyEdit's port
gets wrong; (2) the decision is taken once per sequence at the last prompt token and the value replaces the
layer output from that token on, including generated tokens (the original decides per forward); (3) training
stops as soon as the target is reproduced; (4) values are float32 on the model's device (the session's
precision only changes the computation, and the value is cast to the layer output's dtype where it replaces it);
(5) the keys are searched in the edit store's faiss index (``editing/router.py``, metric ``l2``, exact below
20,000 keys), not in a tensor the layer holds.

How the codebook maps onto the store's index: the index holds one key per active edit (faiss id = edit id), the
store's invariant. A codebook entry is named by the edit that opened it and its key *is* that edit's key; an
edit that only grew an entry's radius (same label, within reach) keeps its key in the index but is not an entry.
So the nearest entry is the nearest key among the entry ids: when some active edits are not entries, the search
is restricted to the entry ids (a faiss ``IDSelectorBatch``), otherwise it is a plain search. The radius check
(distance <= the entry's ε) and the value stay here, in the replayed codebook. Ties go to the oldest entry, as
in the reference code. The replay measures distances with the same faiss kernel as the routing, so an edit whose
key set a radius is inside it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.adapters.lm.edit_io import edit_module_names
from lifelong.editing.editor import EditArtifact, Editor
from lifelong.editing.router import Router
from lifelong.editors._prefix import replay_frozen_layers
from lifelong.platform.config import ConfigError
from lifelong.platform.registry import Capabilities, register


@dataclass
class GraceConfig:
    """The wrapped layer, the initial deferral radius and the value training schedule."""

    layer: int = 24
    module: str = "mlp.down_proj"
    eps_init: float = 1.0
    lr: float = 1.0
    max_steps: int = 100
    stop_loss: float = 0.1

    def validate(self) -> None:
        if self.eps_init <= 0:
            raise ValueError(f"eps_init: must be > 0, got {self.eps_init}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass
class _Entry:
    key: np.ndarray  # float32 (d,): the key of the edit that opened the entry (edit_ids[0])
    value: Any
    eps: float
    label: str
    edit_ids: list[int] = field(default_factory=list)


def _make_layer(base: Any, owner: "GraceEditor") -> Any:
    import torch
    from torch import nn

    class GraceLayer(nn.Module):
        """The wrapped layer: base output, replaced from the query token on when the codebook matches."""

        def __init__(self) -> None:
            super().__init__()
            self.base = base

        @property
        def weight(self) -> torch.Tensor:
            return self.base.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.base(x)
            return owner._apply(x, out)

    return GraceLayer()


@register("editor", "grace", config=GraceConfig, capabilities=Capabilities(supports_rollback=True),
          summary="GRACE: codebook of (key, value, deferral radius) at one layer")
class GraceEditor(Editor):
    """A codebook at one layer; rollback replays the remaining edits."""

    metric = "l2"

    def __init__(self, config: GraceConfig | None = None) -> None:
        super().__init__(config)
        self.layer_name = ""
        self._wrapped: Any = None
        self.edits: dict[int, tuple[np.ndarray, Any, str]] = {}  # id -> (key, value, label), replayed in id order
        self.codebook: list[_Entry] = []
        self._entry_of: dict[int, int] = {}  # opening edit id -> codebook index
        self._entry_ids = np.zeros(0, dtype=np.int64)
        self._decision: list[int] | None = None
        self._qidx: Any = None
        self._held = False
        self._train_value: Any = None
        self._capture: list[Any] | None = None
        self.last_ids: list[int | None] = []

    # ------------------------------------------------------------------ wiring
    def attach(self, model: Any, tokenizer: Any) -> None:
        self._ensure_router()
        try:
            (name,) = edit_module_names(model, [self.config.layer], self.config.module)
            base = model.get_submodule(name)
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"grace layer/module: {exc}") from exc
        parent, _, child = name.rpartition(".")
        self._wrapped = _make_layer(base, self)
        setattr(model.get_submodule(parent), child, self._wrapped)
        self.model, self.tokenizer, self.layer_name = model, tokenizer, name

    def detach(self) -> None:
        if self._wrapped is not None:
            parent, _, child = self.layer_name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, self._wrapped.base)
            self._wrapped = None
        self._release_router()

    def _query(self, x: Any) -> Any:
        import torch

        if self._qidx is not None:
            idx = self._qidx.to(x.device).clamp(max=x.shape[1] - 1)
            return x[torch.arange(x.shape[0], device=x.device), idx]
        return x[:, -1]

    def _start(self, x: Any) -> Any:
        import torch

        if self._qidx is not None:
            return self._qidx.to(x.device).clamp(max=x.shape[1] - 1)
        return torch.full((x.shape[0],), x.shape[1] - 1, dtype=torch.long, device=x.device)

    def _apply(self, x: Any, out: Any) -> Any:
        import torch

        if self._capture is not None:
            self._capture.append(self._query(x).detach().float())
        bsz, seq = x.shape[0], x.shape[1]
        if self._train_value is not None:
            pos = torch.arange(seq, device=x.device)[None, :] >= self._start(x)[:, None]
            return torch.where(pos[..., None], self._train_value.to(out.dtype), out)
        dec = self._decision
        if not (dec is not None and len(dec) == bsz and (self._held or seq == 1)):
            dec = self._decide(x)
            self._decision = dec
            self.last_ids = [self.codebook[j].edit_ids[0] if j >= 0 else None for j in dec]
        if all(j < 0 for j in dec):
            return out
        out = out.clone()
        start = self._start(x).tolist() if seq > 1 else [0] * bsz
        for b, j in enumerate(dec):
            if j >= 0:
                out[b, start[b]:] = self.codebook[j].value.to(out.dtype)
        return out

    def _decide(self, x: Any) -> list[int]:
        router = self.router
        if not self.codebook or router is None or len(router) == 0:
            return [-1] * x.shape[0]
        q = self._query(x).float().detach().cpu().numpy()
        allowed = None if len(self._entry_ids) == len(router) else self._entry_ids
        dist, ids = router.nearest(q, allowed=allowed, newest=False)
        out = []
        for d, i in zip(dist.tolist(), ids.tolist()):
            j = self._entry_of.get(int(i), -1)
            out.append(j if j >= 0 and d <= self.codebook[j].eps else -1)
        return out

    @contextlib.contextmanager
    def routing(self, query_index: Any = None) -> Iterator[None]:
        self._decision, self._qidx, self._held = None, query_index, True
        try:
            yield
        finally:
            self._decision, self._qidx, self._held = None, None, False

    def routed_ids(self) -> list[int | None]:
        return list(self.last_ids)

    # ------------------------------------------------------------------ training
    def train_edit(self, prompt: str, target: str) -> EditArtifact:
        import torch

        cfg = self.config
        ids, tgt, lo = self.edit_ids(prompt, target)
        q = torch.tensor([lo], device=self.device)
        # the layers below the wrapped one are frozen: computed once, by the key's forward, for every step
        with replay_frozen_layers(self.model, cfg.layer):
            with torch.no_grad(), self.autocast():  # the key as the session's router will see it
                self._capture, self._qidx, self._held = [], q, True
                self._decision = [-1]  # the key and the initial value come from the base layer
                try:
                    outs: list[Any] = []
                    h = self._wrapped.base.register_forward_hook(
                        lambda m, i, o: outs.append(o[0, lo].detach().clone()))
                    self.io.forward(ids)
                    h.remove()
                    key = self._capture[0][0].clone()
                finally:
                    self._capture, self._decision, self._held = None, None, False
            value = torch.nn.Parameter(outs[0].float())  # float32 master copy, whatever the precision
            opt = torch.optim.Adam([value], lr=cfg.lr)
            self._train_value = value
            try:
                steps, loss = self.fit(opt, ids, tgt, lo, cfg.max_steps, cfg.stop_loss)
            finally:
                self._train_value, self._qidx = None, None
        return EditArtifact(tensors={f"grace.{self.layer_name}.value": value.detach().cpu().clone()},
                            key=key.cpu().numpy(), layer=self.layer_name,
                            extra={"steps": steps, "final_loss": round(loss, 5)})

    # ------------------------------------------------------------------ codebook
    def activate(self, edit_id: int, key: np.ndarray | None, tensors: dict[str, Any], target: str = "") -> None:
        if key is None:
            raise ValueError(f"grace edit {edit_id} has no key")
        value = tensors.get(f"grace.{self.layer_name}.value")
        if value is None:
            raise ValueError(f"grace edit {edit_id} has no value for {self.layer_name}")
        key = np.asarray(key, dtype=np.float32).reshape(-1)
        self._own_router_add(int(edit_id), key)  # a store's router holds the key already
        self.edits[int(edit_id)] = (key, value.float().to(self.device), target)
        self._replay()

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        for i in edit_ids:
            self.edits.pop(int(i), None)
        self._own_router_remove(edit_ids)  # a store's rollback removed the keys from its router
        self._replay()

    def _replay(self) -> None:
        """Rebuild the codebook from the active edits in the order they were applied (GRACE's update rules)."""
        book: list[_Entry] = []
        e0 = self.config.eps_init
        entries = Router("l2")  # the entry keys so far, searched with the routing's kernel
        pos: dict[int, int] = {}  # opening edit id -> index in book
        for eid in sorted(self.edits):
            key, value, label = self.edits[eid]
            if not book:
                eps = e0
            else:
                d, near_id = entries.nearest(key[None], newest=False)
                dist = float(d[0])
                near = book[pos[int(near_id[0])]]
                if dist > e0 + near.eps:
                    eps = e0
                elif label == near.label:
                    near.eps = max(near.eps, dist)
                    near.edit_ids.append(eid)
                    continue
                else:
                    near.eps = eps = dist / 2
            pos[eid] = len(book)
            book.append(_Entry(key, value, eps, label, [eid]))
            entries.add([eid], key[None])
        self.codebook = book
        self._entry_of = {e.edit_ids[0]: j for j, e in enumerate(book)}
        self._entry_ids = np.asarray(sorted(self._entry_of), dtype=np.int64)
        self._decision = None
