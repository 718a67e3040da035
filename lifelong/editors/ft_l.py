"""FT-L: constrained fine-tuning of one layer (the fine-tuning baseline of ROME/MEMIT and EasyEdit).

Taken from the baseline: the weight of one MLP projection is fine-tuned on the edit prompt's target tokens with
everything else frozen. Where it departs: EasyEdit's FT-L clamps the update to an L∞ ball (``norm_constraint``);
here the update is kept small by a few Adam steps with early stopping (stop once the target is reproduced), and
an optional L∞ clamp (``norm_constraint``, 0 = off). Each edit is stored as its weight *delta*; the layer's weight
is always ``base + Σ deltas of the active edits`` summed in the order applied, so rolling an edit back restores the
saved slice minus that delta — and rolling all of them back restores the base weights bit for bit. Edits are
trained sequentially on the current weights (later edits see earlier ones), so rolling back an early edit does
not undo its influence on later ones: that is the honest cost of FT-L that the bench measures. The weight stays
float32 under every precision (autocast only changes the computation), so rollback is exact in bf16 and fp16 too.

Memory: the deltas are a full copy of the tuned weight each (3.5 MB for SmolLM2's ``down_proj``, 3.5 GB at
1,000 edits), and every one of them is in the store already. So FT-L keeps only the base weight and the ids in
force: switching on an edit newer than every edit in force adds its delta to the weight (the same float
additions, in the same order, as the sum from the base) and drops it; a rollback, or an edit switched on out of
id order (another writer's), rebuilds the weight from the base with the deltas read back one at a time from the
store (``Editor.stored_tensors``, hash-checked). Without a store the deltas are kept in memory as before.

FT-L does not route: its edits change the weight for every input, so it stores no key, nothing of it is in the
store's router, and ``routing`` is a no-op. Its ``metric`` (``l2``) only names the store's router metric.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.adapters.lm.edit_io import edit_module_names
from lifelong.editing.editor import EditArtifact, Editor
from lifelong.editors._prefix import replay_frozen_layers
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError
from lifelong.platform.registry import Capabilities, register


@dataclass
class FTLConfig:
    """Which weight is tuned and how."""

    layer: int = 24
    module: str = "mlp.down_proj"
    lr: float = 5e-4
    max_steps: int = 40
    stop_loss: float = 0.1
    norm_constraint: float = 0.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.norm_constraint < 0:
            raise ValueError(f"norm_constraint: must be >= 0 (0 = off), got {self.norm_constraint}")


@register("editor", "ft-l", config=FTLConfig, capabilities=Capabilities(supports_rollback=True),
          summary="FT-L: fine-tune one MLP weight per edit; rollback subtracts the edit's stored delta")
class FTLEditor(Editor):
    """Fine-tunes one weight matrix; the stored delta of each edit makes rollback possible."""

    metric = "l2"

    def __init__(self, config: FTLConfig | None = None) -> None:
        super().__init__(config)
        self.layer_name = ""
        self.base_weight: Any = None
        #: the edits in force, in id order: their delta when kept in memory (no store), else None (read back)
        self.deltas: dict[int, Any] = {}

    def attach(self, model: Any, tokenizer: Any) -> None:
        try:
            (name,) = edit_module_names(model, [self.config.layer], self.config.module)
            mod = model.get_submodule(name)
            weight = mod.weight
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"ft-l layer/module: {exc}") from exc
        self.model, self.tokenizer, self.layer_name = model, tokenizer, name
        self.base_weight = weight.detach().clone()

    def detach(self) -> None:
        if self.base_weight is not None:
            self._param().data.copy_(self.base_weight)
            self.deltas.clear()

    def _param(self) -> Any:
        return self.model.get_submodule(self.layer_name).weight

    def _delta(self, edit_id: int) -> Any:
        """An edit's delta: the copy in memory, or read back from the store."""
        kept = self.deltas.get(edit_id)
        if kept is not None:
            return kept
        if self.stored_tensors is None:
            raise ValueError(f"ft-l edit {edit_id}: its delta is neither in memory nor readable from a store")
        delta = self.stored_tensors(edit_id).get(f"ft-l.{self.layer_name}.delta")
        if delta is None:
            raise ValueError(f"ft-l edit {edit_id} has no delta for {self.layer_name}")
        return delta

    def _rebuild(self) -> None:
        """The weight from the base plus the deltas in force, summed in id order (one delta in memory at a time
        when they are read back). An edit whose delta cannot be read back (a damaged file) is left out and
        reported after the weight is set, so a rollback never leaves the rolled-back edit in the weight."""
        w = self.base_weight.clone()
        unreadable: list[tuple[int, Exception]] = []
        for eid in sorted(self.deltas):
            try:
                delta = self._delta(eid)
            except (ValueError, UserError) as exc:  # UserError: the store's CorruptEditError
                unreadable.append((eid, exc))
                continue
            w += delta.to(w.device, w.dtype)
        self._param().data.copy_(w)
        for eid, _ in unreadable:
            self.deltas.pop(eid, None)
        if unreadable:
            raise unreadable[0][1]

    def train_edit(self, prompt: str, target: str) -> EditArtifact:
        import torch

        cfg = self.config
        ids, tgt, lo = self.edit_ids(prompt, target)
        param = self._param()
        start = param.detach().clone()
        param.requires_grad_(True)
        opt = torch.optim.Adam([param], lr=cfg.lr)

        def clamp() -> None:
            if cfg.norm_constraint > 0:
                with torch.no_grad():
                    param.copy_(start + (param - start).clamp(-cfg.norm_constraint, cfg.norm_constraint))

        try:
            with replay_frozen_layers(self.model, cfg.layer):  # the layers below the tuned one are frozen
                steps, loss = self.fit(opt, ids, tgt, lo, cfg.max_steps, cfg.stop_loss, after_step=clamp)
            delta = (param.detach() - start).cpu()
        finally:
            param.requires_grad_(False)
            param.data.copy_(start)  # the edit is switched on by activate(), like every editor
        return EditArtifact(tensors={f"ft-l.{self.layer_name}.delta": delta}, key=None, layer=self.layer_name,
                            extra={"steps": steps, "final_loss": round(loss, 5)})

    def activate(self, edit_id: int, key: np.ndarray | None, tensors: dict[str, Any], target: str = "") -> None:
        delta = tensors.get(f"ft-l.{self.layer_name}.delta")
        if delta is None:
            raise ValueError(f"ft-l edit {edit_id} has no delta for {self.layer_name}")
        edit_id = int(edit_id)
        in_order = not self.deltas or edit_id > max(self.deltas)
        self.deltas[edit_id] = None if self.stored_tensors is not None else delta.to(self.device)
        if in_order:  # the sum from the base would add this delta last: add it to the weight as it is
            w = self._param().data
            w += delta.to(w.device, w.dtype)
        else:
            self._rebuild()

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        for i in edit_ids:
            self.deltas.pop(int(i), None)
        self._rebuild()

    @contextlib.contextmanager
    def routing(self, query_index: Any = None) -> Iterator[None]:
        yield

    def routed_ids(self) -> list[int | None]:
        return []
