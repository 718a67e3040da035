"""An edit session: one loaded model, one editor attached to it, and an EditStore.

The session loads the model once, checks the store was made for it, hands the editor the store's router (the
faiss index the routing editors search, ``editing/router.py``), re-activates the store's edits (refusing, one
clear message each, those whose adapter file fails its hash) and offers apply / rollback / generate /
teacher-forced scoring. It uses the store through its public methods only.

Concurrency (for a long-lived user such as the server, ``lifelong/serving/``): ``lock`` (a re-entrant mutex) is
held by every method that touches the model's edit state or runs the model (apply, rollback, sync, generate,
teacher-forced scoring); a caller that runs the model itself holds it too. One mutex rather than a reader-writer
lock: the routed LoRA keeps its routing decision on the model between forwards, and training an edit puts a
trainable LoRA on every input, so two forwards of one model can never overlap anyway. A generation therefore
sees the edits as they were before an apply or after it, never half of one. ``sync`` picks up other writers'
changes (another server, the CLI): it compares the store's change counter (``EditStore.version``) and only
when it moved switches edits on and off to match the store's active rows.

Without a store (``store=None``) the session is the unedited base model: generate and score, nothing to apply.

Device and precision are session options (``device``, ``precision``), not part of the editor config a store fixes:
the model is moved to the device, editors make every tensor there, and training, generation and scoring run under
``platform/device.autocast``. Master weights stay float32, so the model identity and the stored tensors (always
written from CPU, float32) are the same whatever the device or precision an edit was made with.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Sequence

import numpy as np

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL, load_causal_lm, model_identity
from lifelong.editing.editor import Editor, check_edit_text, check_edit_tokens, new_store_config
from lifelong.editing.store import CorruptEditError, EditRecord, EditStore
from lifelong.platform import registry
from lifelong.platform.config import ConfigError, to_dict
from lifelong.platform.device import check_precision, resolve_device
from lifelong.platform.errors import UserError

DEFAULT_EDITOR = "sola"


def resolve_edit_device(name: str) -> Any:
    """The torch device for ``--device`` (``auto``: CUDA when present, else CPU), by the runner's rules; its
    errors are named after the option and list what is allowed."""
    try:
        return resolve_device(name)
    except ConfigError as exc:
        raise UserError(f"--{exc}") from None


def check_edit_precision(name: str) -> str:
    """``name`` if it is a known precision, else a UserError naming ``--precision`` and the allowed values."""
    try:
        return check_precision(name)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


class _BaseModel(Editor):
    """The editor of a session without a store: attaches nothing, routes nothing (the unedited base model)."""

    metric = "ip"

    def attach(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def detach(self) -> None:
        pass


class EditSession:
    """A loaded model, an editor attached to it, and an EditStore: apply, roll back, generate, score."""

    def __init__(
        self,
        store: str | os.PathLike | EditStore | None,
        *,
        model: str | None = None,
        editor: str | None = None,
        editor_config: dict[str, Any] | None = None,
        loaded: tuple[Any, Any] | None = None,
        create: bool = True,
        quiet: bool = False,
        device: str | Any = None,
        precision: str = "fp32",
        readonly: bool = False,
    ) -> None:
        """``device``: ``auto``/``cpu``/``cuda``/``cuda:N`` or a torch device; None means ``auto`` for a model the
        session loads and "where it is" for a ``loaded`` one. ``precision``: ``fp32``, ``bf16`` or ``fp16``.
        Both are checked before the store is opened, so a bad value leaves no store behind. ``readonly``: open the
        store for reading only (``EditStore``'s ``readonly``: generate and score, nothing to apply or roll back).
        A store this session created is removed again if the session fails to start (an unknown model, a bad
        editor config), so a refused command leaves no empty store folder."""
        self.precision = check_edit_precision(precision)
        if device is not None or loaded is None:
            device = resolve_edit_device(str(device or "auto"))
        self.quiet = quiet
        self.lock = threading.RLock()
        self._seen_version: int | None = None
        self.problems: list[tuple[int, str]] = []
        self.loaded_ids: list[int] = []
        #: where a new store's per-model settings came from (``Editor.model_defaults``), for ``edit apply`` to print
        self.defaults_note = ""
        #: the calibration record behind a new store's calibrated default (None without one)
        self.calibrated_default: dict[str, Any] | None = None
        if store is None:
            self.store: EditStore | None = None
            self.model_name = model or DEFAULT_MODEL
            self.model, self.tokenizer = loaded if loaded is not None else load_causal_lm(self.model_name)
            if device is not None:
                self.model.to(device)
            self.device = next(self.model.parameters()).device
            self.editor: Editor = _BaseModel(None)
            self.editor.precision = self.precision
            self.editor_name, self.editor_config = "", {}
            self.editor.attach(self.model, self.tokenizer)
            return
        if isinstance(store, EditStore):
            self.store = store
        else:
            self.store = EditStore.open(store, create=create, readonly=readonly)
        try:
            self._start(model, editor, editor_config, loaded, device)
        except BaseException:
            if not isinstance(store, EditStore):
                self.store.discard_if_empty()
                self.store.close()
            raise

    def _route_as_calibrated(self) -> None:
        """A store calibrated on its own edits (``edit calibrate --store``) routes with the threshold recorded there;
        the editor config the edits were made with stays as stored (the threshold decides routing only)."""
        assert self.store is not None
        record = self.store.calibration()
        if not record or "threshold" not in record or not hasattr(self.editor.config, "threshold"):
            return
        self.editor.config.threshold = float(record["threshold"])
        on = record.get("calibrated_on") or {}
        self.defaults_note = (f"SoLA threshold {self.editor.config.threshold:.4f} (calibrated for this store on "
                              f"{on.get('n_edits', '?')} edits of {on.get('store') or on.get('file') or '?'})")

    def _start(self, model: str | None, editor: str | None, editor_config: dict[str, Any] | None,
               loaded: tuple[Any, Any] | None, device: Any) -> None:
        """The rest of ``__init__`` once the store is open: load the model, check it, attach the editor."""
        assert self.store is not None
        stored_model = self.store.meta().get("model_name")
        model_name = model or stored_model or DEFAULT_MODEL
        self.model, self.tokenizer = loaded if loaded is not None else load_causal_lm(model_name)
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        ident = model_identity(self.model)  # of the float32 weights: the same on every device and precision
        self.store.check_model(ident)
        if stored_model is None:
            self.store.set_model_name(model_name)
        self.model_name = model_name
        spec = self.store.editor_spec()
        if spec is not None:
            if editor is not None and editor != spec[0]:
                self.store.set_editor(editor, {})  # raises the clear "store holds X edits" error
            name, cfg = spec[0], dict(spec[1])
            changed = {k: v for k, v in (editor_config or {}).items() if cfg.get(k) != v}
            if changed:
                raise UserError(
                    f"edit store {self.store.path} fixes the {name} config ({', '.join(f'{k}={cfg.get(k)!r}' for k in changed)}); "
                    "its edits were made with it, so it cannot be changed — use a new store"
                )
        else:  # a new store: the model family's layer settings, what the editor measured for this model, the caller's
            name = editor or DEFAULT_EDITOR
            cfg, self.defaults_note, self.calibrated_default = new_store_config(self.model, name, ident, editor_config)
        self.editor = registry.create("editor", name, **cfg)
        self.editor.precision = self.precision
        self.editor_name = name
        self.editor_config = to_dict(self.editor.config) if self.editor.config is not None else {}
        self._route_as_calibrated()
        router = self.store.refresh_router(metric=self.editor.metric)
        if router.metric != self.editor.metric:  # another first writer fixed the store's spec since it was read
            self.store.check_editor(self.editor_name, self.editor_config, self.editor.metric)  # its one line
        self.editor.bind_router(router)
        self.editor.attach(self.model, self.tokenizer)
        self.editor.stored_tensors = self._stored_tensors
        self._seen_version = self.store.version()
        self._activate_rows(self.store.active_edits())

    @property
    def seen_version(self) -> int | None:
        """The store version the model's edits were last matched to (None without a store)."""
        return self._seen_version

    def sync(self) -> bool:
        """Match the model's edits to the store's active rows if another writer changed them since the last look
        (one meta read when nothing changed); returns whether anything was re-read. Idempotent: the version is read
        before the rows, so a write that lands in between is picked up by the next call."""
        if self.store is None:
            return False
        with self.lock:
            version = self.store.version()
            if version == self._seen_version:
                return False
            active = self.store.active_edits()
            self.store.refresh_router()  # in place (the editor holds this object): the other writers' keys
            active_ids = {r.id for r in active}
            gone = [i for i in self.loaded_ids if i not in active_ids]
            if gone:
                self.editor.deactivate(gone)
                self.loaded_ids = [i for i in self.loaded_ids if i in active_ids]
            loaded, refused = set(self.loaded_ids), {i for i, _ in self.problems}
            self._activate_rows([rec for rec in active if rec.id not in loaded and rec.id not in refused])
            self._seen_version = version
            return True

    def _activate_rows(self, rows: Sequence[EditRecord]) -> None:
        """Switch rows on, after checking that the store's editor spec is this session's. The rows were read
        first: each was committed with the spec it needs (the first edit fixes it in its own transaction), so a
        row that another writer committed after this session read the spec (two first writers racing on a new
        store) is refused here with the store's one-line error, never handed to an editor that cannot run it."""
        if rows:
            self.store.check_editor(self.editor_name, self.editor_config)
        for rec in rows:
            self._activate(rec)

    def _activate(self, rec: EditRecord) -> bool:
        try:
            tensors = self.store.load_tensors(rec)
        except CorruptEditError as exc:
            self.problems.append((rec.id, str(exc)))
            if not self.quiet:
                print(f"lifelong: error: {exc} (edit {rec.id} refused; the other edits are in force)", file=sys.stderr)
            return False
        self.editor.activate(rec.id, rec.key, tensors, rec.target)
        self.loaded_ids.append(rec.id)
        return True

    def _stored_tensors(self, edit_id: int) -> dict[str, Any]:
        """An edit's tensors read back from the store (``Editor.stored_tensors``; hash-checked, CorruptEditError
        when the file no longer matches)."""
        return self.store.load_tensors(self.store.get(edit_id))

    def close(self) -> None:
        self.editor.detach()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ editing
    def apply(self, prompt: str, target: str, extra: dict[str, Any] | None = None, *,
              require_target: bool = True) -> EditRecord:
        """Train one edit, store it atomically (its tensors from CPU, with the device and precision it was trained
        with in ``extra``), switch it on.

        An edit whose training stops at ``max_steps`` without every target token being the argmax (the editor's
        ``last_fit``, from the shared fit loop) did not take: it is refused with a one-line UserError naming the
        prompt, the steps and the final loss, and nothing is written (no row, no adapter file). A caller that
        measures such edits rather than keeping them (a benchmark) may pass ``require_target=False``."""
        store = self._require_store("apply")
        check_edit_text(prompt, "prompt", "edit")
        check_edit_text(target, "target", "edit")
        context = int(getattr(getattr(self.model, "config", None), "max_position_embeddings", 0) or 0)
        check_edit_tokens(self.tokenizer, prompt, target, "edit", context)
        self.io.check_target(target)  # a classifier's target must be one of its classes
        with self.lock:
            self.sync()  # FT-L trains on top of the edits in force: have the other writers' ones
            # refuse early (before training) a store fixed to another editor spec; add_edit checks again, in the
            # transaction that inserts the row, and fixes the spec if this is the store's first edit
            store.check_editor(self.editor_name, self.editor_config, self.editor.metric)
            self.editor.last_fit = None
            art = self.editor.train_edit(prompt, target)
            fit = self.editor.last_fit
            if require_target and fit is not None and not fit.reached:
                raise UserError(
                    f"edit {prompt!r} -> {target!r} did not take: after {fit.steps} steps (max_steps) the target "
                    f"tokens are not all the most likely ones (final loss {fit.loss:.4g}); nothing was stored — "
                    "raise max_steps or lr with --set"
                )
            return self.add_trained(prompt, target, art.tensors, art.key, art.layer,
                                    {**(extra or {}), **art.extra, "device": str(self.device),
                                     "precision": self.precision})

    def add_trained(self, prompt: str, target: str, tensors: dict[str, Any], key: Any, layer: str,
                    extra: dict[str, Any] | None = None) -> EditRecord:
        """Store an edit trained elsewhere (``apply``'s second half; ``editing/export.py`` imports a PEFT adapter
        with it) and switch it on."""
        store = self._require_store("add an edit")
        with self.lock:
            cpu = {k: v.detach().cpu() for k, v in tensors.items()}
            before = store.version()
            # fixes the store's editor, config and metric with its first edit, or checks them, in one transaction
            rec = store.add_edit(prompt, target, editor=self.editor_name, tensors=cpu, key=key, layer=layer,
                                 editor_config=self.editor_config, extra=extra or {}, metric=self.editor.metric)
            store.refresh_router()  # the key went in with the row, unless another writer got in between
            self.editor.activate(rec.id, rec.key, tensors, target)
            self.loaded_ids.append(rec.id)
            self._after_own_write(before, 1)
            return rec

    def rollback(self, ids: Sequence[int]) -> list[tuple[int, bool]]:
        """Roll edits back in the store and in the model; unknown ids raise, repeated ids are no-ops."""
        store = self._require_store("rollback")
        with self.lock:
            before = store.version()
            out = store.rollback(ids)  # the keys leave the router in the same transaction as the rows
            store.refresh_router()  # as after add_trained: another writer may have got in between
            changed = [i for i, c in out if c]
            self.editor.deactivate([i for i in changed if i in set(self.loaded_ids)])
            self.loaded_ids = [i for i in self.loaded_ids if i not in set(changed)]
            self._after_own_write(before, 1 if changed else 0)
            return out

    def _after_own_write(self, before: int, bumps: int) -> None:
        """After this session's own write: if the counter moved by exactly that write and we were in step
        before it, we still are (no re-read); otherwise another writer got in between, so ``sync``."""
        if self._seen_version == before and self.store.version() == before + bumps:
            self._seen_version = before + bumps
        else:
            self.sync()

    def _require_store(self, what: str) -> EditStore:
        if self.store is None:
            raise UserError(f"{what} needs an edit store; this session is the unedited base model")
        return self.store

    # ------------------------------------------------------------------ inference
    @property
    def io(self) -> Any:
        """The model family's ``adapters/lm/edit_io.EditIO`` (the editor's: causal LM, seq2seq or classifier)."""
        return self.editor.io

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[dict[str, Any]]:
        """Greedy completions, one prompt at a time (so a prompt's output never depends on its neighbours); a
        classifier's completion is its predicted class name."""
        import torch

        results = []
        for prompt in prompts:
            with self.lock, torch.no_grad(), self.editor.autocast(), self.editor.routing():
                new, text = self.io.generate(prompt, max_new_tokens)
                routed = self.editor.routed_ids()
            results.append({"prompt": prompt, "completion": text, "edit_id": routed[0] if routed else None,
                            "tokens": new})
        return results

    def generate_unedited(self, prompts: Sequence[str], max_new_tokens: int = 16, batch_size: int = 16
                          ) -> list[dict[str, Any]]:
        """Greedy completions of the *unedited* model, ``batch_size`` prompts per call (5x faster than ``generate``
        for a 135M decoder on one thread): for references taken before any edit or with every edit switched off.
        Raises RuntimeError when an edit routes any of the prompts, since a batch shares one routing block."""
        import torch

        results = []
        for s in range(0, len(prompts), batch_size):
            chunk = list(prompts[s : s + batch_size])
            with self.lock, torch.no_grad(), self.editor.autocast(), self.editor.routing():
                outs = self.io.generate_batch(chunk, max_new_tokens)
                routed = [i for i in self.editor.routed_ids() if i is not None]
            if routed:
                raise RuntimeError(f"generate_unedited: edit {routed[0]} is in force; switch the edits off first")
            results += [{"prompt": p, "completion": text, "edit_id": None, "tokens": new}
                        for p, (new, text) in zip(chunk, outs)]
        return results

    def _run(self, inputs: dict[str, Any], qidx: Any) -> Any:
        """One forward of the (edited) model on a batch, routed at ``qidx``; its logits."""
        import torch

        with self.lock, torch.no_grad(), self.editor.autocast(), self.editor.routing(qidx):
            return self.model(**inputs).logits

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (prompt, target): ``(argmax ids, target ids)`` over the target positions, teacher-forced (a
        classifier: the predicted class against the target class)."""
        return self.io.teacher_forced(prompts, targets, self._run, batch_size)

    def perplexity(self, texts: Sequence[str]) -> float | None:
        """Perplexity of the (edited) model over ``texts`` (token-weighted, each text routed at its first token);
        None for a model without a language-model head (a classifier) or without tokens to score."""
        import math

        nll = self.io.text_nll(texts, self._run)
        if nll is None:
            return None
        total, count = sum(n for n, _ in nll), sum(c for _, c in nll)
        return math.exp(total / count) if count else None

    def token_accuracy(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """EasyEdit's teacher-forced token accuracy of each target after its prompt."""
        return [float((p == t).mean()) if len(t) else 0.0 for p, t in self.teacher_forced(prompts, targets)]
