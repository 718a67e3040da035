"""SoLA: reversible lifelong model editing with semantically routed LoRA (Luo, Ran, Kärkkäinen et al.,
arXiv 2603.11239; no official code exists, see ``methods/SoLA.md``).

Taken from the paper: one independent LoRA per edit, trained against the frozen base model (``h = h0 + LoRA_i(x)``,
never through earlier edits) and frozen afterwards; the key of an edit is the hidden representation of the last
prompt token; at inference the nearest key is looked up at the first edited layer and that edit's LoRA is
switched on only within a threshold α, the decision holding for every edited layer of the forward pass; no
match means the base model's output; rollback deletes the key. LoRA rank 4 style init (A random, B zero).

Where the paper is silent or where this module departs from it:
- The key is the *input* of the first edited module at the last prompt token, L2-normalised, and the distance is
  cosine distance ``1 - cos`` (scale-free); α is ours, chosen by measurement on the bundled edit set (see
  ``docs/editing.md``). ``sola`` also accepts ``threshold`` in the config to recalibrate.
- Training stops as soon as the target is reproduced (teacher-forced argmax on every target token and loss below
  ``stop_loss``), capped at ``max_steps``; Adam instead of the paper's 40 epochs of SGD with cosine decay,
  because on CPU the paper's schedule would take minutes per edit.
- Routing is per sequence inside a batch (several edits in one batch, their LoRA weights gathered and applied in
  one batched product); during generation the decision taken on the prompt holds for the generated tokens.
- Defaults (layer, module, rank, threshold, steps) were measured on SmolLM2-135M with ``bench/edit_sweep.py``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.platform.config import ConfigError
from lifelong.platform.editing import EditArtifact, Editor, join_ids
from lifelong.platform.registry import Capabilities, register


@dataclass
class SoLAConfig:
    """Where the LoRA sits, how it is trained, and how close a query must be to a key to use it."""

    layers: list[int] = field(default_factory=lambda: [20])
    module: str = "mlp.down_proj"
    rank: int = 4
    alpha: float = 8.0
    threshold: float = 0.15
    lr: float = 5e-3
    max_steps: int = 60
    stop_loss: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("layers: give at least one layer index")
        if self.rank < 1:
            raise ConfigError(f"rank: must be >= 1, got {self.rank}")
        if not 0.0 <= self.threshold <= 2.0:
            raise ConfigError(f"threshold: cosine distance in [0, 2], got {self.threshold}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")


def lora_tensor_names(module_name: str) -> tuple[str, str]:
    """PEFT's names for a LoRA's two matrices on ``module_name``."""
    return (f"base_model.model.{module_name}.lora_A.weight", f"base_model.model.{module_name}.lora_B.weight")


@register("editor", "sola", config=SoLAConfig, capabilities=Capabilities(supports_rollback=True),
          summary="SoLA: one frozen LoRA per edit, switched on by semantic routing at the edited layer")
class SoLAEditor(Editor):
    """One LoRA per edit, routed by the cosine distance of the last prompt token's input at the first edited layer."""

    name = "sola"
    metric = "ip"

    def __init__(self, config: SoLAConfig | None = None) -> None:
        self.config = config or SoLAConfig()
        self.routed: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.steps_used: list[int] = []

    def attach(self, model: Any, tokenizer: Any) -> None:
        from lifelong.adapters.lora import RoutedLoRA, module_names

        try:
            names = module_names(model, sorted(self.config.layers), self.config.module)
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"sola layers/module: {exc}") from exc
        self.model, self.tokenizer = model, tokenizer
        self.routed = RoutedLoRA(model, names, rank=self.config.rank, alpha=self.config.alpha,
                                 threshold=self.config.threshold)

    def detach(self) -> None:
        if self.routed is not None:
            self.routed.unwrap()
            self.routed = None

    # ------------------------------------------------------------------ keys and training
    def key_of(self, prompts: Sequence[str]) -> np.ndarray:
        """Raw router inputs at the last token of each prompt (not normalised), shape (n, d)."""
        import torch

        keys = []
        for prompt in prompts:
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad(), self.routed.capture_keys() as cap, self.routed.session():
                self.model(**enc)
            keys.append(cap[0][0].float().cpu().numpy())
        return np.stack(keys)

    def train_edit(self, prompt: str, target: str) -> EditArtifact:
        import torch

        cfg = self.config
        key = self.key_of([prompt])[0]
        p_ids, t_ids = join_ids(self.tokenizer, prompt, target)
        ids = torch.tensor([p_ids + t_ids])
        tgt = torch.tensor(t_ids)
        lo, hi = len(p_ids) - 1, len(p_ids) + len(t_ids) - 1
        gen = torch.Generator().manual_seed(cfg.seed)
        steps = 0
        with self.routed.train_adapter(gen) as params:
            opt = torch.optim.Adam(params, lr=cfg.lr)
            for steps in range(1, cfg.max_steps + 1):
                logits = self.model(input_ids=ids).logits[0, lo:hi]
                loss = torch.nn.functional.cross_entropy(logits, tgt)
                if bool((logits.argmax(-1) == tgt).all()) and float(loss) < cfg.stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            weights = self.routed.trained_weights()
        self.steps_used.append(steps)
        tensors = {}
        for name, (a, b) in weights.items():
            na, nb = lora_tensor_names(name)
            tensors[na], tensors[nb] = a, b
        return EditArtifact(tensors=tensors, key=key, layer=self.routed.names[0],
                            extra={"steps": steps, "final_loss": round(float(loss), 5)})

    # ------------------------------------------------------------------ switching edits
    def activate(self, edit_id: int, key: np.ndarray | None, tensors: dict[str, Any], target: str = "") -> None:
        import torch

        if key is None:
            raise ValueError(f"sola edit {edit_id} has no key")
        weights = {}
        for name in self.routed.names:
            na, nb = lora_tensor_names(name)
            if na not in tensors or nb not in tensors:
                raise ValueError(f"sola edit {edit_id} has no LoRA for {name}")
            weights[name] = (tensors[na], tensors[nb])
        self.routed.add(edit_id, torch.as_tensor(np.asarray(key, dtype=np.float32)), weights)

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        self.routed.remove(list(edit_ids))

    @contextlib.contextmanager
    def routing(self, query_index: Any = None) -> Iterator[None]:
        with self.routed.session(query_index):
            yield

    def routed_ids(self) -> list[int | None]:
        dec = self.routed.last_decision
        return list(dec.ids) if dec is not None else []
