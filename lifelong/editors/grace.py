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
stops as soon as the target is reproduced; (4) keys and values are float32 on the model's device (the session's
precision only changes the computation, and the value is cast to the layer output's dtype where it replaces it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.adapters.lora import module_names
from lifelong.editing.editor import EditArtifact, Editor
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

    def __post_init__(self) -> None:
        if self.eps_init <= 0:
            raise ConfigError(f"eps_init: must be > 0, got {self.eps_init}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")


@dataclass
class _Entry:
    key: Any
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

    name = "grace"
    metric = "l2"
    config_class = GraceConfig

    def __init__(self, config: GraceConfig | None = None) -> None:
        super().__init__(config)
        self.layer_name = ""
        self._wrapped: Any = None
        self.edits: dict[int, tuple[Any, Any, str]] = {}  # id -> (key, value, label), replayed in id order
        self.codebook: list[_Entry] = []
        self._decision: list[int] | None = None
        self._qidx: Any = None
        self._held = False
        self._train_value: Any = None
        self._capture: list[Any] | None = None
        self.last_ids: list[int | None] = []

    # ------------------------------------------------------------------ wiring
    def attach(self, model: Any, tokenizer: Any) -> None:

        try:
            (name,) = module_names(model, [self.config.layer], self.config.module)
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
        import torch

        if not self.codebook:
            return [-1] * x.shape[0]
        q = self._query(x).float()
        keys = torch.stack([e.key for e in self.codebook])
        d = torch.cdist(q, keys)
        best, j = d.min(dim=1)
        eps = torch.tensor([e.eps for e in self.codebook], device=q.device)
        return torch.where(best <= eps[j], j, -1).tolist()

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
        with torch.no_grad(), self.autocast():  # the key as the session's router will see it
            self._capture, self._qidx, self._held = [], q, True
            self._decision = [-1]  # the key and the initial value come from the base layer
            try:
                outs: list[Any] = []
                h = self._wrapped.base.register_forward_hook(lambda m, i, o: outs.append(o[0, lo].detach().clone()))
                self.model(input_ids=ids)
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
        import torch

        if key is None:
            raise ValueError(f"grace edit {edit_id} has no key")
        value = tensors.get(f"grace.{self.layer_name}.value")
        if value is None:
            raise ValueError(f"grace edit {edit_id} has no value for {self.layer_name}")
        key_t = torch.as_tensor(np.asarray(key, dtype=np.float32), device=self.device)
        self.edits[int(edit_id)] = (key_t, value.float().to(self.device), target)
        self._replay()

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        for i in edit_ids:
            self.edits.pop(int(i), None)
        self._replay()

    def _replay(self) -> None:
        """Rebuild the codebook from the active edits in the order they were applied (GRACE's update rules)."""
        import torch

        book: list[_Entry] = []
        e0 = self.config.eps_init
        for eid in sorted(self.edits):
            key, value, label = self.edits[eid]
            if not book:
                book.append(_Entry(key, value, e0, label, [eid]))
                continue
            d = torch.cdist(key[None], torch.stack([e.key for e in book]))[0]
            j = int(d.argmin())
            dist = float(d[j])
            near = book[j]
            if dist > e0 + near.eps:
                book.append(_Entry(key, value, e0, label, [eid]))
            elif label == near.label:
                near.eps = max(near.eps, dist)
                near.edit_ids.append(eid)
            else:
                near.eps = dist / 2
                book.append(_Entry(key, value, dist / 2, label, [eid]))
        self.codebook = book
        self._decision = None
