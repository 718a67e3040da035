"""SoLA: reversible lifelong model editing with semantically routed LoRA (Luo, Ran, Kärkkäinen et al.,
arXiv 2603.11239; no official code exists; user guide and measurements in ``docs/editing.md``).

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
- The keys are searched in the edit store's faiss index (``editing/router.py``, metric ``ip``), the router of
  record, not in a copy held by the model: exact below 20,000 keys, IVF above (approximate for paraphrases).
  Ties (the same prompt edited twice) go to the newest edit. A key whose edit this session could not load (a
  corrupted adapter file) routes to the base model rather than to the next-nearest edit.
- Thresholds per model (``model_defaults``): a new store on a base model listed in ``sola_thresholds.json``
  (matched by the SHA-256 of its weights, so a fine-tuned copy under the same name is not matched) gets the
  threshold ``lifelong edit calibrate`` chose for it, with the command, data, size and date it was chosen on;
  SmolLM2-135M's 0.2894 keeps 98 % of WordNet development locality prompts unrouted (``docs/editing.md``). It
  applies only at the key site it was calibrated at, and a threshold the caller sets always wins; any other model
  keeps the generic ``SoLAConfig.threshold`` (0.08, measured on the bundled corrections), and ``edit apply`` says
  which one a new store got. A store can also be calibrated on its own edits (``edit calibrate --store``).
- Defaults: the key site and the generic threshold were measured on SmolLM2-135M with ``bench/edit_keys.py`` (bundled
  set) and ``bench/edit_routing.py`` (ROC over key sites and poolings on the WordNet development split; see
  ``docs/editing.md``); rank, modules and the training schedule were chosen so every bundled edit converges in a
  few steps (``bench/edit_bench.py``).
- Key options (ours; the paper fixes the last token of the edited layer): ``key_layer``/``key_module`` read the
  key at another module's input at or below the first edited module (a forward pre-hook keeps it for the
  decision), ``key_pooling`` ``mean`` averages it over the prompt's tokens (padding and target positions left
  out). Measured, none beat the default site on the WordNet set, so the defaults keep the original key.
- PEFT export (``editing/export.py``, ``lifelong edit export|import``): an edit's tensors already carry PEFT's
  names (``lora_tensor_names``) and shapes (A ``(r, in)``, B ``(out, r)``, scale ``alpha / r``), so an edit is a
  standard LoRA adapter (``peft_adapter``); what PEFT cannot express is the routing: the adapter is on for every
  input, so it reproduces SoLA only on inputs SoLA routes to that edit. ``from_peft`` takes one back, refusing
  an adapter whose rank, alpha or target modules are not this editor's.
- Keys, the centre and the frozen LoRA weights live on the model's device; keys are computed under the session's
  precision (the router sees queries computed the same way), and returned to the store as float32 numpy.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from lifelong.adapters.lm.edit_io import edit_layers, edit_module_names
from lifelong.adapters.lm.routed_lora import RoutedLoRA
from lifelong.editing.editor import EditArtifact, Editor
from lifelong.editing.router import Router
from lifelong.editors._prefix import first_layer_index, replay_frozen_layers
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.registry import Capabilities, register

# Generic prompts whose mean key can centre the router's keys (``center_keys``): hidden states of a causal LM
# share a large common direction, which makes raw cosine similarities of unrelated prompts high.
GENERIC_PROMPTS: tuple[str, ...] = (
    "The weather today is", "My name is", "The best way to cook rice is", "In the year 1900,", "She opened the door and",
    "The main ingredient of bread is", "A triangle has", "He was born in", "The river flows into the",
    "The most popular sport in the world is", "The meeting will start at", "Scientists have discovered that",
    "The price of the house was", "Once upon a time, there was", "The train leaves from", "The color of the sky is",
    "Dogs are known for", "The company announced that", "The song was released in", "The recipe calls for",
    "The law was passed by", "Children usually learn to", "The mountain is located in", "The computer was invented by",
    "The capital of the region is", "The book was published by", "The element with the highest", "The film was directed by",
    "The official currency of the country is", "The painting hangs in", "The language spoken there is", "The symbol for it is",
)


KEY_POOLINGS = ("last", "mean")

#: the calibrated thresholds shipped with the package: model identity -> threshold and how it was chosen
THRESHOLDS_FILE = Path(__file__).with_name("sola_thresholds.json")
#: the config fields that make the key (a threshold calibrated at one key site means nothing at another)
KEY_FIELDS = ("layers", "key_layer", "key_module", "key_pooling", "center_keys")


def calibrated_thresholds() -> list[dict[str, Any]]:
    """The rows of ``sola_thresholds.json`` (model, weights_sha256, threshold, key, source, n_edits, date, ...)."""
    return list(json.loads(THRESHOLDS_FILE.read_text(encoding="utf-8"))["models"])


@dataclass
class SoLAConfig:
    """Where the LoRA sits, how it is trained, and how close a query must be to a key to use it."""

    layers: list[int] = field(default_factory=lambda: [24])
    modules: list[str] = field(default_factory=lambda: ["self_attn.o_proj", "mlp.down_proj"])
    rank: int = 4
    alpha: float = 8.0
    threshold: float = 0.08
    center_keys: bool = True
    lr: float = 5e-3
    max_steps: int = 60
    stop_loss: float = 0.1
    seed: int = 0
    #: the key site: the input of ``key_module`` in decoder layer ``key_layer`` (``""``: of the decoder layer itself,
    #: the residual stream; ``key_layer`` None: the first edited module's input, the site before these fields
    #: existed); it must run before the first edited module (``key_layer <= min(layers)``)
    key_layer: int | None = None
    key_module: str = "self_attn.o_proj"
    #: ``last``: the last prompt token; ``mean``: the mean over the prompt's tokens (padding left out)
    key_pooling: str = "last"

    #: the key fields' values that reproduce the key of stores made before the fields existed. They are the
    #: defaults (the measured best site, ``bench/edit_routing.py``), and a store's recorded config that lacks a
    #: field gets its default, so older stores keep routing with the keys they hold.
    LEGACY: ClassVar[dict[str, Any]] = {"key_layer": None, "key_module": "self_attn.o_proj", "key_pooling": "last"}

    def validate(self) -> None:
        if not self.layers:
            raise ValueError("layers: give at least one layer index")
        if not self.modules:
            raise ValueError("modules: give at least one module name (e.g. self_attn.o_proj)")
        if self.rank < 1:
            raise ValueError(f"rank: must be >= 1, got {self.rank}")
        if not 0.0 <= self.threshold <= 2.0:
            raise ValueError(f"threshold: cosine distance in [0, 2], got {self.threshold}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.key_pooling not in KEY_POOLINGS:
            raise ValueError(f"key_pooling: {self.key_pooling!r} is not allowed; allowed values: {', '.join(KEY_POOLINGS)}")


class KeyedRoutedLoRA(RoutedLoRA):
    """``RoutedLoRA`` whose query is taken at a chosen key site and pooled (SoLA's ``key_layer``, ``key_module``,
    ``key_pooling``): a forward pre-hook on the key module keeps its input, which the first edited module (where
    the decision is taken) pools; without a key module the first edited module's own input is used, as before."""

    def __init__(self, model: Any, names: Sequence[str], *, key_module: Any = None, pooling: str = "last",
                 **kwargs: Any) -> None:
        super().__init__(model, names, **kwargs)
        self.pooling = pooling
        self._key_input: Any = None
        self._mask: Any = None
        self._hooks: list[Any] = []
        if key_module is not None:
            self._hooks.append(key_module.register_forward_pre_hook(self._keep_input, with_kwargs=True))
        if pooling == "mean":
            self._hooks.append(model.register_forward_pre_hook(self._keep_mask, with_kwargs=True))

    def _keep_input(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._key_input = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))

    def _keep_mask(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._mask = kwargs.get("attention_mask")

    def _query(self, x: Any) -> Any:
        import torch

        h = x
        kept = self._key_input
        if kept is not None and tuple(kept.shape[:2]) == tuple(x.shape[:2]):
            h = kept
        if self.pooling == "last":
            return super()._query(h)
        bsz, seq = h.shape[0], h.shape[1]
        keep = torch.ones((bsz, seq), dtype=torch.bool, device=h.device)
        if self._query_index is not None:  # right-padded prompts (and targets): positions up to the last prompt token
            idx = self._query_index.to(h.device).clamp(max=seq - 1)
            keep &= torch.arange(seq, device=h.device)[None] <= idx[:, None]
        mask = self._mask
        if mask is not None and mask.dim() == 2 and tuple(mask.shape) == (bsz, seq):  # left padding
            keep &= mask.to(h.device).bool()
        w = keep.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1)

    def unwrap(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._key_input = self._mask = None
        super().unwrap()


def lora_tensor_names(module_name: str) -> tuple[str, str]:
    """PEFT's names for a LoRA's two matrices on ``module_name``."""
    return (f"base_model.model.{module_name}.lora_A.weight", f"base_model.model.{module_name}.lora_B.weight")


@register("editor", "sola", config=SoLAConfig, capabilities=Capabilities(supports_rollback=True),
          summary="SoLA: one frozen LoRA per edit, switched on by semantic routing at the edited layer")
class SoLAEditor(Editor):
    """One LoRA per edit, routed by the cosine distance of the last prompt token's input at the first edited layer."""

    metric = "ip"

    def __init__(self, config: SoLAConfig | None = None) -> None:
        super().__init__(config)
        self.routed: Any = None
        self.steps_used: list[int] = []

    @classmethod
    def model_defaults(cls, identity: dict[str, str], config: dict[str, Any], given: set[str]
                       ) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        """The calibrated threshold of this base model (``sola_thresholds.json``) when the caller set none and the
        key site is the one it was calibrated at; the line says which threshold a new store gets and why."""
        resolved = build_config(SoLAConfig, {k: v for k, v in config.items() if k in SoLAConfig.__dataclass_fields__})
        if "threshold" in given:
            return {}, f"SoLA threshold {resolved.threshold:g} (as set)", None
        rows = [r for r in calibrated_thresholds() if r["weights_sha256"] == identity.get("weights_sha256")]
        generic = f"SoLA threshold {resolved.threshold:g} (the generic default"
        if not rows:
            return {}, (f"{generic}: no calibrated threshold for this model; choose one with `lifelong edit "
                        "calibrate --file DEV.jsonl`, or `--store STORE` once the store holds edits with paraphrases "
                        "and locality prompts)"), None
        row = rows[0]
        if any(getattr(resolved, k) != row["key"][k] for k in KEY_FIELDS):
            return {}, (f"{generic}: {row['model']}'s calibrated {row['threshold']} holds for its default key site "
                        "only, and this store's key differs; choose one with `lifelong edit calibrate`)"), None
        return {"threshold": float(row["threshold"])}, (
            f"SoLA threshold {row['threshold']} (calibrated for {row['model']}: {row['n_edits']} edits, "
            f"{row['locality_kept']:.3f} of their locality prompts unrouted, {row['paraphrases_routed']:.3f} of their "
            f"paraphrases routed; {row['source'].split(';')[-1].strip()}, {row['date']})"), row

    @classmethod
    def calibrations_for(cls, model_name: str) -> list[dict[str, Any]]:
        """The shipped calibrations of a model of this name (the edits its default threshold was chosen on)."""
        return [r for r in calibrated_thresholds() if r["model"] == model_name]

    def bind_router(self, router: Router) -> None:
        super().bind_router(router)
        if self.routed is not None:
            self.routed.router = router

    def attach(self, model: Any, tokenizer: Any) -> None:
        names: list[str] = []
        try:
            for layer in sorted(self.config.layers):  # forward order: by layer, then modules as listed
                for module in self.config.modules:
                    names += edit_module_names(model, [layer], module)
            for n in names:
                model.get_submodule(n)
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"sola layers/modules: {exc}") from exc
        key_module = self._key_site(model)
        self.model, self.tokenizer = model, tokenizer
        self.routed = KeyedRoutedLoRA(model, names, rank=self.config.rank, alpha=self.config.alpha,
                                      threshold=self.config.threshold, router=self._ensure_router(),
                                      key_module=key_module, pooling=self.config.key_pooling)
        if self.config.center_keys:
            self.routed.centre = self._raw_keys(GENERIC_PROMPTS).mean(0)

    def _key_site(self, model: Any) -> Any:
        """The module whose input is the key (None: the first edited module's), after checking ``key_layer`` and
        ``key_module`` against the model: a layer it lacks or a module name no decoder layer has is a one-line
        ``ConfigError`` naming the allowed values (a layer of 999 used to be a traceback, and a ``key_module``
        that does not exist was accepted silently while ``key_layer`` was unset)."""
        path, blocks = edit_layers(model)
        first = min(first_layer_index(model, layer) for layer in self.config.layers)
        k = first
        if self.config.key_layer is not None:
            try:
                k = first_layer_index(model, self.config.key_layer)
            except ValueError:
                k = -1
            if not 0 <= k <= first:
                raise ConfigError(f"sola key_layer: {self.config.key_layer} is not allowed; the key is read at or "
                                  f"below the first edited layer: allowed values 0..{first} (or -{len(blocks)}.."
                                  f"{first - len(blocks)} from the end)")
        names = [n for n, _ in blocks[k].named_modules() if n]
        if self.config.key_module and self.config.key_module not in names:
            if self.config.key_layer is None and self.config.key_module == self.config.LEGACY["key_module"]:
                return None  # the default name, unused without key_layer (a model family that lacks it is fine)
            raise ConfigError(f"sola key_module: {self.config.key_module!r} is not a module of decoder layer {k}; "
                              f"allowed values: '' (the layer's input), {', '.join(names)}")
        if self.config.key_layer is None:
            return None
        if k == first and self.config.key_module not in ("", *self.config.modules[:1]):
            # inside the first edited layer, the key module must run before the first edited module
            order = [n for n, _ in blocks[k].named_modules()]
            if order.index(self.config.key_module) > order.index(self.config.modules[0]):
                raise ConfigError(f"sola key_module: {self.config.key_module} runs after {self.config.modules[0]} "
                                  f"in layer {k}; the key is read before the routing decision")
        return model.get_submodule(f"{path}.{k}" + (f".{self.config.key_module}" if self.config.key_module else ""))

    def detach(self) -> None:
        if self.routed is not None:
            self.routed.unwrap()
            self.routed = None
        self._release_router()

    # ------------------------------------------------------------------ keys and training
    def _raw_keys(self, prompts: Sequence[str]) -> Any:
        """Router inputs at the last token of each prompt (one right-padded batch), float32 (n, d) on the device."""
        import torch

        inputs, last = self.io.prompt_batch(prompts)  # the model family's inputs (adapters/lm/edit_io.py)
        with torch.no_grad(), self.autocast(), self.routed.capture_keys(last) as cap, self.routed.session(last):
            self.io.forward(inputs)
        return cap[0].float()

    def key_of(self, prompts: Sequence[str]) -> np.ndarray:
        """The routing keys of prompts: router input at the last token, minus the centre (not normalised), as
        float32 numpy on the CPU (what the store keeps)."""
        keys = self._raw_keys(prompts)
        if self.routed.centre is not None:
            keys = keys - self.routed.centre[None]
        return keys.cpu().numpy()

    def train_edit(self, prompt: str, target: str) -> EditArtifact:
        import torch

        cfg = self.config
        key = self.key_of([prompt])[0]
        ids, tgt, lo = self.edit_ids(prompt, target)
        gen = torch.Generator().manual_seed(cfg.seed)  # a CPU generator: the same initial LoRA on every device
        first = min(first_layer_index(self.model, layer) for layer in cfg.layers)
        with self.routed.train_adapter(gen) as params, replay_frozen_layers(self.model, first):
            opt = torch.optim.Adam(params, lr=cfg.lr)
            steps, loss = self.fit(opt, ids, tgt, lo, cfg.max_steps, cfg.stop_loss)
            weights = self.routed.trained_weights()
        self.steps_used.append(steps)
        tensors = {}
        for name, (a, b) in weights.items():
            na, nb = lora_tensor_names(name)
            tensors[na], tensors[nb] = a, b
        return EditArtifact(tensors=tensors, key=key, layer=self.routed.names[0],
                            extra={"steps": steps, "final_loss": round(loss, 5)})

    # ------------------------------------------------------------------ PEFT adapters (editing/export.py)
    @classmethod
    def peft_adapter(cls, config: SoLAConfig, tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(LoraConfig keyword arguments, state dict in PEFT's names)`` of one stored edit: the same rank, scale
        and modules, the tensors as they are (their names are PEFT's already)."""
        suffix = ".lora_A.weight"
        modules = sorted(k[len("base_model.model."):-len(suffix)] for k in tensors if k.endswith(suffix))
        if not modules:
            raise ValueError("the edit holds no LoRA tensors")
        for m in modules:
            na, nb = lora_tensor_names(m)
            if nb not in tensors:
                raise ValueError(f"the edit has lora_A but no lora_B for {m}")
        kwargs = {"r": int(config.rank), "lora_alpha": config.alpha, "target_modules": modules, "lora_dropout": 0.0,
                  "bias": "none", "task_type": "CAUSAL_LM", "use_rslora": False, "fan_in_fan_out": False}
        return kwargs, dict(tensors)

    @classmethod
    def check_peft_config(cls, config: SoLAConfig, adapter_config: dict[str, Any]) -> None:
        """Refuse (ValueError) an adapter config that is not a plain LoRA of this config's rank and scale (checked
        before any model is loaded)."""
        if str(adapter_config.get("peft_type", "LORA")).upper() != "LORA":
            raise ValueError(f"peft_type is {adapter_config.get('peft_type')!r}; only LORA adapters can be imported")
        for flag in ("use_dora", "use_rslora", "fan_in_fan_out"):
            if adapter_config.get(flag):
                raise ValueError(f"{flag} is set; SoLA's LoRA is a plain one (B A x, scale alpha / r)")
        if adapter_config.get("bias", "none") != "none" or adapter_config.get("modules_to_save"):
            raise ValueError("the adapter trains biases or whole modules; SoLA stores only LoRA matrices")
        r, alpha = int(adapter_config.get("r", 0)), float(adapter_config.get("lora_alpha", 0))
        if r != config.rank or abs(alpha / r - config.alpha / config.rank) > 1e-9:
            raise ValueError(f"rank {r}, alpha {alpha}: this store's SoLA uses rank {config.rank}, "
                             f"alpha {config.alpha}")

    def from_peft(self, adapter_config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """The store tensors of a PEFT LoRA adapter made for this editor's modules, rank and scale (an adapter saved
        by ``peft_adapter`` or trained with PEFT on the same modules); anything else is refused with the reason."""
        self.check_peft_config(self.config, adapter_config)
        r = int(adapter_config["r"])
        tensors: dict[str, Any] = {}
        for name in self.routed.names:
            na, nb = lora_tensor_names(name)
            for want in (na, nb):
                hit = [k for k in state if k == want or k == want.replace(".weight", ".default.weight")]
                if not hit:
                    raise ValueError(f"the adapter has no {want} (this store's SoLA edits {', '.join(self.routed.names)})")
                tensors[want] = state[hit[0]].detach().float().cpu()
            mod = self.model.get_submodule(name)
            if tuple(tensors[na].shape) != (r, mod.in_features) or tuple(tensors[nb].shape) != (mod.out_features, r):
                raise ValueError(f"{name}: LoRA shapes {tuple(tensors[na].shape)}, {tuple(tensors[nb].shape)} do not "
                                 f"fit the module ({mod.out_features} x {mod.in_features}, rank {r})")
        extra = sorted(k for k in state if not any(k in (n, n.replace(".weight", ".default.weight"))
                                                   for name in self.routed.names for n in lora_tensor_names(name)))
        if extra:
            raise ValueError(f"the adapter holds tensors on modules this store's SoLA does not edit: {extra[:3]}")
        return tensors

    # ------------------------------------------------------------------ switching edits
    def activate(self, edit_id: int, key: np.ndarray | None, tensors: dict[str, Any], target: str = "") -> None:
        if key is None:
            raise ValueError(f"sola edit {edit_id} has no key")
        weights = {}
        for name in self.routed.names:
            na, nb = lora_tensor_names(name)
            if na not in tensors or nb not in tensors:
                raise ValueError(f"sola edit {edit_id} has no LoRA for {name}")
            weights[name] = (tensors[na], tensors[nb])
        self._own_router_add(edit_id, key)  # a store's router holds the key already
        self.routed.add(edit_id, weights)  # moved to the device

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        self.routed.remove(list(edit_ids))
        self._own_router_remove(edit_ids)  # a store's rollback removed the keys from its router

    @contextlib.contextmanager
    def routing(self, query_index: Any = None) -> Iterator[None]:
        with self.routed.session(query_index):
            yield

    def routed_ids(self) -> list[int | None]:
        dec = self.routed.last_decision
        return list(dec.ids) if dec is not None else []
