"""The editor interface: what one edit is, what an editor produces, and the fit loop every editor shares.

An *editor* (registry kind ``editor``: ``sola``, ``grace``, ``ft-l``; the plugins live in ``lifelong/editors/``)
knows how to train one edit against a model and how to switch stored edits on and off; the store
(``editing/store.py``) keeps them durable; its router (``editing/router.py``) is the index the routing editors
(SoLA, GRACE) search for each sequence; the session (``editing/session.py``) joins them over one loaded model and
hands the editor the store's router (``bind_router``). An editor used without a store routes over a router of
its own (made at ``attach``), so it can be tested alone.

An editor's config class is the one it is registered with (``registry.get("editor", name).config``); configs
validate themselves in ``validate()`` (raising ``ValueError``), which ``platform.config.build_config`` turns into a
``ConfigError`` naming the field.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lifelong.adapters.lm.edit_io import editable_io, editor_defaults, join_ids  # noqa: F401  (join_ids: re-exported)
from lifelong.editing.router import Router
from lifelong.platform import registry
from lifelong.platform.config import ConfigError, build_config, validate_config
from lifelong.platform.device import LossScaler, autocast
from lifelong.platform.errors import UserError

#: the longest edit prompt (and paraphrase or locality prompt) and target accepted, in characters: checked before
#: any model work, since training cost grows with the length (a 20,000-character prompt ran for minutes)
MAX_PROMPT_CHARS = 2000
MAX_TARGET_CHARS = 500
#: the longest prompt plus target accepted, in tokens (or the model's context, if shorter)
MAX_EDIT_TOKENS = 512
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def check_edit_text(value: str, field: str, where: str, *, max_chars: int | None = None) -> str:
    """``value`` if it is text an edit can hold, else a one-line UserError naming ``where`` and ``field``.

    Refused: a lone UTF-16 surrogate (not Unicode text: it cannot be stored or tokenized), a control character
    other than tab, newline and carriage return (NUL and the like: they tokenize to noise the edit cannot learn),
    and more than ``max_chars`` characters (default: ``MAX_PROMPT_CHARS``, ``MAX_TARGET_CHARS`` for a target)."""
    limit = max_chars if max_chars is not None else (MAX_TARGET_CHARS if field == "target" else MAX_PROMPT_CHARS)
    prefix = f"{where}: field {field!r}" if where else field
    if len(value) > limit:
        raise UserError(f"{prefix} is {len(value)} characters long; the limit is {limit}")
    for i, ch in enumerate(value):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise UserError(f"{prefix} holds a lone UTF-16 surrogate (U+{code:04X}) at character {i + 1}; "
                            "it must be valid Unicode text")
        if (code < 0x20 or 0x7F <= code < 0xA0) and ch not in _ALLOWED_CONTROLS:
            raise UserError(f"{prefix} holds the control character U+{code:04X} at character {i + 1}; "
                            "only tab, newline and carriage return are allowed")
    return value


def check_edit_tokens(tokenizer: Any, prompt: str, target: str, where: str, context: int = 0) -> None:
    """Refuse (one-line UserError naming ``where``) a prompt plus target longer than ``MAX_EDIT_TOKENS`` tokens
    or the model's ``context``, whichever is shorter; needs only the tokenizer, not the model."""
    limit = min(MAX_EDIT_TOKENS, context) if context else MAX_EDIT_TOKENS
    n = len(tokenizer(prompt + " " + target, add_special_tokens=False).input_ids)
    if n > limit:
        why = "the model's context" if context and context < MAX_EDIT_TOKENS else "the edit limit"
        raise UserError(f"{where}: prompt and target are {n} tokens, longer than {why} of {limit} tokens")


@dataclass
class EditRequest:
    """One edit as read from a file: the prompt, the new target, and held-out prompts to measure it."""

    prompt: str
    target: str
    paraphrases: list[str] = field(default_factory=list)
    locality: list[str] = field(default_factory=list)
    id: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class FitResult:
    """How the last ``Editor.fit`` ended: its steps, the loss of its last forward, and whether every target token
    was the argmax then (``reached``; False: it stopped at ``max_steps`` short of the target)."""

    steps: int
    loss: float
    reached: bool


@dataclass
class EditArtifact:
    """What an editor produces for one edit: tensors to store, the routing key, the layer it lives on."""

    tensors: dict[str, Any]
    key: np.ndarray | None
    layer: str
    extra: dict[str, Any] = field(default_factory=dict)


class Editor:
    """Base class of lifelong editors. Subclasses train one edit and switch stored edits on and off."""

    config: Any = None
    #: the store's router metric for this editor's keys ("ip": cosine on normalised keys, "l2": Euclidean)
    metric: str = "ip"

    def __init__(self, config: Any = None) -> None:
        self.config = self._validated(config)
        self.model: Any = None
        self.tokenizer: Any = None
        #: mixed precision of training and inference; set by the session, never stored in the config (a store made
        #: in fp32 can be used in bf16)
        self.precision: str = "fp32"
        #: the index the editor routes over (the store's, see ``bind_router``); None until attached or bound
        self.router: Router | None = None
        self._owns_router = False
        #: how the last ``fit`` ended (None before any); the session refuses an edit whose fit did not reach its
        #: target
        self.last_fit: FitResult | None = None
        #: reads a stored edit's tensors back (``edit id -> tensors``, from the store's adapter file, hash-checked);
        #: set by the session when it has a store. An editor that needs an edit's tensors again later (FT-L, to
        #: rebuild its weight on a rollback) reads them through it instead of keeping a copy of every edit in memory
        self.stored_tensors: Callable[[int], dict[str, Any]] | None = None

    @classmethod
    def spec(cls) -> registry.PluginSpec:
        """The registry entry of this editor class (its name and config class)."""
        for spec in registry.list_plugins("editor"):
            if spec.factory is cls:
                return spec
        raise ConfigError(f"{cls.__name__} is not a registered editor")

    @classmethod
    def model_defaults(cls, identity: dict[str, str], config: dict[str, Any], given: set[str]
                       ) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        """Settings this editor has measured for one base model (``identity``: its name and weights hash), for a new
        store: ``(settings, a line saying where they come from, the calibration record or None)``. ``config`` is the
        config the store would get without them, ``given`` the keys the caller set (those always win). An editor
        with nothing measured per model returns ``({}, "", None)``."""
        return {}, "", None

    @classmethod
    def calibrations_for(cls, model_name: str) -> list[dict[str, Any]]:
        """The calibration records (each with ``calibrated_on.edit_ids``) behind the defaults ``model_defaults``
        gives a model of this name, so a report can refuse the edits they were chosen on; none by default."""
        return []

    @classmethod
    def _validated(cls, config: Any) -> Any:
        """The config, validated; without one, the registered config class's defaults through ``build_config``."""
        if config is None:
            spec = next((sp for sp in registry.list_plugins("editor") if sp.factory is cls), None)
            return build_config(spec.config, {}) if spec is not None and spec.config is not None else None
        return validate_config(config)

    def bind_router(self, router: Router) -> None:
        """Route over ``router`` (the session binds the store's). Its metric must be the editor's. The editor never
        changes a bound router: its owner (the store) adds and removes the keys, in the same transaction as the rows.
        """
        if router.metric != self.metric:
            raise ValueError(f"the router routes by {router.metric!r}; this editor needs {self.metric!r}")
        self.router, self._owns_router = router, False

    def _ensure_router(self) -> Router:
        """The bound router, or (an editor used without a store) one of its own, made on first use."""
        if self.router is None:
            self.router, self._owns_router = Router(self.metric), True
        return self.router

    def _own_router_add(self, edit_id: int, key: np.ndarray) -> None:
        """Add an activated edit's key, if the router is the editor's own (a bound one has it from its owner)."""
        router = self._ensure_router()
        if self._owns_router and edit_id not in router:
            router.add([edit_id], np.asarray(key, dtype=np.float32).reshape(1, -1))

    def _release_router(self) -> None:
        """At ``detach``: forget a router of the editor's own (a bound one stays bound)."""
        if self._owns_router:
            self.router, self._owns_router = None, False

    def _own_router_remove(self, edit_ids: Sequence[int]) -> None:
        if self._owns_router and self.router is not None:
            self.router.remove(edit_ids)

    @property
    def device(self) -> Any:
        """The attached model's device: every tensor the editor makes is made there."""
        return next(self.model.parameters()).device

    def autocast(self) -> Any:
        """The session's autocast block (a no-op in fp32)."""
        return autocast(self.precision, self.device)

    @property
    def io(self) -> Any:
        """The attached model family's ``adapters/lm/edit_io.EditIO`` (causal LM, seq2seq or sentence classifier):
        how an edit becomes inputs and a target loss; made once per attached model."""
        io = getattr(self, "_io", None)
        if io is None or io.model is not self.model:
            io = self._io = editable_io(self.model, self.tokenizer)
        return io

    def edit_ids(self, prompt: str, target: str) -> tuple[Any, Any, int]:
        """``(model inputs of the edit, target ids, index of the query token)`` on the model's device; for a causal
        LM the inputs are prompt and target ids in one sequence and the query is the last prompt token."""
        return self.io.edit_inputs(prompt, target)

    def fit(self, optimizer: Any, ids: Any, target: Any, start: int, max_steps: int, stop_loss: float,
            after_step: Any = None) -> tuple[int, float]:
        """``ids``: the inputs ``edit_ids`` gave. Train until every target token is the argmax and the loss is below ``stop_loss`` (at most ``max_steps``
        steps); returns ``(steps, loss of the last forward)`` and records ``last_fit``. When ``max_steps`` runs out,
        one more forward (no gradient) after the last step says whether the target was reached after all.

        Each forward runs in its own autocast block (autocast caches the low-precision copy of trainable leaf
        weights until the block ends, so one block around the loop would train FT-L against a stale copy); the
        loss is taken in float32 and goes backward through a ``LossScaler`` (gradient scaling for fp16).
        """
        import torch

        scaler = LossScaler(self.precision, self.device)
        steps, loss, reached = 0, float("nan"), False
        for steps in range(1, max_steps + 1):
            with self.autocast():
                logits = self.io.target_logits(ids, start, len(target))
            logits = logits.float()
            loss_t = torch.nn.functional.cross_entropy(logits, target)
            loss = float(loss_t.detach())
            reached = bool((logits.argmax(-1) == target).all())
            if reached and loss < stop_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.backward(loss_t)
            scaler.step(optimizer)
            if after_step is not None:
                after_step()
        else:  # max_steps ran out: look once more, after the last step
            with torch.no_grad(), self.autocast():
                logits = self.io.target_logits(ids, start, len(target)).float()
            loss = float(torch.nn.functional.cross_entropy(logits, target))
            reached = bool((logits.argmax(-1) == target).all())
        self.last_fit = FitResult(steps, loss, reached)
        return steps, loss

    def attach(self, model: Any, tokenizer: Any) -> None:
        """Install the editor's modules into ``model`` (done once per session)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Remove everything ``attach`` installed: the model is the base model again."""
        raise NotImplementedError

    def train_edit(self, prompt: str, target: str) -> EditArtifact:
        """Train one edit against the base model (or, for FT-L, the current model); does not activate it."""
        raise NotImplementedError

    def activate(self, edit_id: int, key: np.ndarray | None, tensors: dict[str, Any], target: str = "") -> None:
        """Switch on a stored edit."""
        raise NotImplementedError

    def deactivate(self, edit_ids: Sequence[int]) -> None:
        """Switch edits off (rollback)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def routing(self, query_index: Any = None) -> Iterator[None]:
        """One routing decision for a block of forwards (a generate call, a teacher-forced batch)."""
        yield

    def routed_ids(self) -> list[int | None]:
        """The edit ids used for each sequence of the last routing block (None: the base model's output)."""
        return []


def new_store_config(model: Any, editor: str, identity: dict[str, str], given: dict[str, Any] | None
                     ) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """The config of a new store's editor: the model family's layer settings, then what the editor measured for this
    model (``Editor.model_defaults``, e.g. SoLA's calibrated threshold), then the caller's ``given`` settings; with
    the line that says where the per-model settings came from and their calibration record (None without one)."""
    family, given = editor_defaults(model, editor), given or {}
    hook = getattr(registry.get("editor", editor).factory, "model_defaults", None)
    if hook is None:
        return {**family, **given}, "", None
    measured, note, record = hook(identity, {**family, **given}, set(given))
    return {**family, **measured, **given}, note, record
