"""Lifelong editing on top of the EditStore: the editor interface, an edit session, and the edit metrics.

An *editor* (registry kind ``editor``: ``sola``, ``grace``, ``ft-l``) knows how to train one edit against a model
and how to switch stored edits on and off; the *store* (``platform/store.py``) keeps them durable. An
``EditSession`` joins the two over one loaded model: it loads the model once, checks the store was made for it,
re-activates the store's edits (refusing, one clear message each, those whose adapter file fails its hash) and
offers apply / rollback / generate / teacher-forced scoring.

Device and precision are session options (``device``, ``precision``), not part of the editor config a store fixes:
the model is moved to the device, editors make every tensor there, and training, generation and scoring run under
``platform/precision.autocast``. Master weights stay float32, so the model identity and the stored tensors (always
written from CPU, float32) are the same whatever the device or precision an edit was made with.

Metrics follow EasyEdit's definitions (DESIGN §5): reliability and generalization are the teacher-forced token
accuracy of the target after the edit prompt / its paraphrases; locality is, for unrelated prompts, the fraction
of positions where the edited model's argmax equals the *unedited* model's argmax over the unedited model's own
8-token greedy continuation. The unedited references are computed before the first edit, from a model that no
editor has touched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.platform.errors import UserError
from lifelong.platform.precision import LossScaler, autocast, check_precision
from lifelong.platform.store import CorruptEditError, EditRecord, EditStore

DEFAULT_EDITOR = "sola"
LOCALITY_TOKENS = 8


@dataclass
class EditRequest:
    """One edit as read from a file: the prompt, the new target, and held-out prompts to measure it."""

    prompt: str
    target: str
    paraphrases: list[str] = field(default_factory=list)
    locality: list[str] = field(default_factory=list)
    id: str | None = None
    line: int | None = None


@dataclass
class EditArtifact:
    """What an editor produces for one edit: tensors to store, the routing key, the layer it lives on."""

    tensors: dict[str, Any]
    key: np.ndarray | None
    layer: str
    extra: dict[str, Any] = field(default_factory=dict)


class Editor:
    """Base class of lifelong editors. Subclasses train one edit and switch stored edits on and off."""

    name: str = ""
    config: Any = None
    #: the config dataclass used when none is given
    config_class: Any = None
    #: the store's router metric for this editor's keys ("ip": cosine on normalised keys, "l2": Euclidean)
    metric: str = "ip"

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.model: Any = None
        self.tokenizer: Any = None
        #: mixed precision of training and inference; set by the session, never stored in the config (a store made
        #: in fp32 can be used in bf16)
        self.precision: str = "fp32"

    @property
    def device(self) -> Any:
        """The attached model's device: every tensor the editor makes is made there."""
        return next(self.model.parameters()).device

    def autocast(self) -> Any:
        """The session's autocast block (a no-op in fp32)."""
        return autocast(self.precision, self.device)

    def edit_ids(self, prompt: str, target: str) -> tuple[Any, Any, int]:
        """``(input ids (1, n), target ids, index of the last prompt token)`` on the model's device."""
        import torch

        p_ids, t_ids = join_ids(self.tokenizer, prompt, target)
        ids = torch.tensor([p_ids + t_ids], device=self.device)
        return ids, torch.tensor(t_ids, device=self.device), len(p_ids) - 1

    def fit(self, optimizer: Any, ids: Any, target: Any, start: int, max_steps: int, stop_loss: float,
            after_step: Any = None) -> tuple[int, float]:
        """Train until every target token is the argmax and the loss is below ``stop_loss`` (at most ``max_steps``
        steps); returns ``(steps, loss of the last forward)``.

        Each forward runs in its own autocast block (autocast caches the low-precision copy of trainable leaf
        weights until the block ends, so one block around the loop would train FT-L against a stale copy); the
        loss is taken in float32 and goes backward through a ``LossScaler`` (gradient scaling for fp16).
        """
        import torch

        scaler = LossScaler(self.precision, self.device)
        end = start + len(target)
        steps, loss = 0, float("nan")
        for steps in range(1, max_steps + 1):
            with self.autocast():
                logits = self.model(input_ids=ids).logits[0, start:end]
            logits = logits.float()
            loss_t = torch.nn.functional.cross_entropy(logits, target)
            loss = float(loss_t.detach())
            if bool((logits.argmax(-1) == target).all()) and loss < stop_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.backward(loss_t)
            scaler.step(optimizer)
            if after_step is not None:
                after_step()
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


def join_ids(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the target that follows it (a space between them, EasyEdit style)."""
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    sep = "" if (not target or target[0].isspace() or prompt.endswith((" ", "\n"))) else " "
    full = tokenizer(prompt + sep + target, add_special_tokens=False).input_ids
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        return p_ids, full[len(p_ids) :]
    return p_ids, tokenizer(sep + target, add_special_tokens=False).input_ids


def resolve_edit_device(name: str) -> Any:
    """The torch device for ``--device`` (``auto``: CUDA when present, else CPU), by the runner's rules; its
    errors are named after the option and list what is allowed."""
    from lifelong.platform.config import ConfigError
    from lifelong.platform.runner import resolve_device

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


class EditSession:
    """A loaded model, an editor attached to it, and an EditStore: apply, roll back, generate, score."""

    def __init__(
        self,
        store: str | os.PathLike | EditStore,
        *,
        model: str | None = None,
        editor: str | None = None,
        editor_config: dict[str, Any] | None = None,
        loaded: tuple[Any, Any] | None = None,
        create: bool = True,
        quiet: bool = False,
        device: str | Any = None,
        precision: str = "fp32",
    ) -> None:
        """``device``: ``auto``/``cpu``/``cuda``/``cuda:N`` or a torch device; None means ``auto`` for a model the
        session loads and "where it is" for a ``loaded`` one. ``precision``: ``fp32``, ``bf16`` or ``fp16``.
        Both are checked before the store is opened, so a bad value leaves no store behind."""
        from lifelong.adapters.llm import DEFAULT_MODEL, load_causal_lm, model_identity
        from lifelong.platform import registry
        from lifelong.platform.config import to_dict

        self.precision = check_edit_precision(precision)
        if device is not None or loaded is None:
            device = resolve_edit_device(str(device or "auto"))
        self.quiet = quiet
        if isinstance(store, EditStore):
            self.store = store
        else:
            self.store = EditStore.open(store, create=create)
        stored_model = self.store.meta().get("model_name")
        model_name = model or stored_model or DEFAULT_MODEL
        if stored_model and model and model != stored_model and loaded is None:
            pass  # identity check below decides; a renamed copy of the same weights is fine
        self.model, self.tokenizer = loaded if loaded is not None else load_causal_lm(model_name)
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        ident = model_identity(self.model)  # of the float32 weights: the same on every device and precision
        self.store.check_model(ident)
        if stored_model is None:
            with self.store._write_txn():
                self.store._set_meta("model_name", model_name)
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
        else:
            name, cfg = editor or DEFAULT_EDITOR, dict(editor_config or {})
        self.editor: Editor = registry.create("editor", name, **cfg)
        self.editor.precision = self.precision
        self.editor_name = name
        self.editor_config = to_dict(self.editor.config) if self.editor.config is not None else {}
        self.editor.attach(self.model, self.tokenizer)
        self.problems: list[tuple[int, str]] = []
        self.loaded_ids: list[int] = []
        for rec in self.store.active_edits():
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

    def close(self) -> None:
        self.editor.detach()
        self.store.close()

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ editing
    def apply(self, prompt: str, target: str, extra: dict[str, Any] | None = None) -> EditRecord:
        """Train one edit, store it atomically (its tensors from CPU, with the device and precision it was trained
        with in ``extra``), switch it on."""
        if self.store.editor_spec() is None:
            self.store.set_editor(self.editor_name, self.editor_config)
        art = self.editor.train_edit(prompt, target)
        tensors = {k: v.detach().cpu() for k, v in art.tensors.items()}
        rec = self.store.add_edit(
            prompt, target, editor=self.editor_name, tensors=tensors, key=art.key, layer=art.layer,
            editor_config=self.editor_config,
            extra={**(extra or {}), **art.extra, "device": str(self.device), "precision": self.precision},
        )
        self.editor.activate(rec.id, rec.key, art.tensors, target)
        self.loaded_ids.append(rec.id)
        return rec

    def rollback(self, ids: Sequence[int]) -> list[tuple[int, bool]]:
        """Roll edits back in the store and in the model; unknown ids raise, repeated ids are no-ops."""
        out = self.store.rollback(ids)
        changed = [i for i, c in out if c]
        self.editor.deactivate(changed)
        self.loaded_ids = [i for i in self.loaded_ids if i not in set(changed)]
        return out

    # ------------------------------------------------------------------ inference
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[dict[str, Any]]:
        """Greedy completions, one prompt at a time (so a prompt's output never depends on its neighbours)."""
        import torch

        results = []
        for prompt in prompts:
            enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            with torch.no_grad(), self.editor.autocast(), self.editor.routing():
                out = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
                )
                routed = self.editor.routed_ids()
            new = out[0, enc.input_ids.shape[1] :].tolist()
            results.append({
                "prompt": prompt,
                "completion": self.tokenizer.decode(new, skip_special_tokens=True),
                "edit_id": routed[0] if routed else None,
                "tokens": new,
            })
        return results

    def teacher_forced(self, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each (prompt, target): ``(argmax ids, target ids)`` over the target positions, teacher-forced."""
        import torch

        pairs = [join_ids(self.tokenizer, p, t) for p, t in zip(prompts, targets)]
        out: list[tuple[np.ndarray, np.ndarray]] = []
        pad = self.tokenizer.pad_token_id
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            length = max(len(p) + len(t) for p, t in chunk)
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for i, (p, t) in enumerate(chunk):
                ids[i, : len(p) + len(t)] = torch.tensor(p + t)
                mask[i, : len(p) + len(t)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            qidx = torch.tensor([len(p) - 1 for p, _ in chunk], device=self.device)
            with torch.no_grad(), self.editor.autocast(), self.editor.routing(qidx):
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            preds = logits.argmax(-1).cpu().numpy()
            for i, (p, t) in enumerate(chunk):
                pred = preds[i, len(p) - 1 : len(p) + len(t) - 1]
                out.append((pred, np.asarray(t)))
        return out

    def token_accuracy(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """EasyEdit's teacher-forced token accuracy of each target after its prompt."""
        return [float((p == t).mean()) if len(t) else 0.0 for p, t in self.teacher_forced(prompts, targets)]


# ---------------------------------------------------------------------- metrics over a session
def base_references(session: EditSession, locality_prompts: Sequence[str], n_tokens: int = LOCALITY_TOKENS
                    ) -> list[tuple[str, np.ndarray]]:
    """The unedited model's greedy continuation of each locality prompt and its teacher-forced argmax on it.

    Must be computed before any edit is switched on (the session's model is still the base model).
    """
    refs = []
    gens = session.generate(locality_prompts, max_new_tokens=n_tokens)
    conts = [session.tokenizer.decode(g["tokens"], skip_special_tokens=False) for g in gens]
    preds = session.teacher_forced(locality_prompts, conts)
    for cont, (pred, _) in zip(conts, preds):
        refs.append((cont, pred))
    return refs


def locality_scores(session: EditSession, locality_prompts: Sequence[str],
                    refs: Sequence[tuple[str, np.ndarray]]) -> list[float]:
    """Fraction of positions where the edited model's argmax equals the unedited model's, per prompt."""
    preds = session.teacher_forced(locality_prompts, [c for c, _ in refs])
    scores = []
    for (pred, _), (_, base_pred) in zip(preds, refs):
        n = min(len(pred), len(base_pred))
        scores.append(float((pred[:n] == base_pred[:n]).mean()) if n else 1.0)
    return scores


def evaluate_store(session: EditSession, requests: Sequence[EditRequest]) -> dict[str, Any]:
    """Reliability, generalization and locality of the session's model on ``requests``.

    Locality needs the unedited model: it is obtained by switching every active edit off for the reference
    pass and back on afterwards (the editors guarantee that this restores the base model exactly).
    """
    rel = session.token_accuracy([r.prompt for r in requests], [r.target for r in requests])
    para_p = [p for r in requests for p in r.paraphrases]
    para_t = [r.target for r in requests for _ in r.paraphrases]
    gen = session.token_accuracy(para_p, para_t) if para_p else []
    loc_p = [p for r in requests for p in r.locality]
    loc: list[float] = []
    if loc_p:
        active = list(session.loaded_ids)
        with _edits_off(session, active):
            refs = base_references(session, loc_p)
        loc = locality_scores(session, loc_p, refs)
    return {
        "reliability": _mean(rel),
        "generalization": _mean(gen) if gen else None,
        "locality": _mean(loc) if loc else None,
        "n_edits": len(requests),
    }


@contextlib.contextmanager
def _edits_off(session: EditSession, ids: Sequence[int]) -> Iterator[None]:
    recs = {r.id: r for r in session.store.active_edits()}
    session.editor.deactivate(ids)
    try:
        yield
    finally:
        for i in ids:
            rec = recs.get(i)
            if rec is not None:
                session.editor.activate(rec.id, rec.key, session.store.load_tensors(rec), rec.target)


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def resolve_path(p: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(p)))


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


# ---------------------------------------------------------------------- the sequential editing benchmark
def run_edit_bench(
    editor: str,
    requests: Sequence[EditRequest],
    *,
    n: int | None = None,
    seed: int = 0,
    out: str | os.PathLike = "runs/edit-bench",
    model: str | None = None,
    editor_config: dict[str, Any] | None = None,
    loaded: tuple[Any, Any] | None = None,
    source: str = "",
    rollback_fraction: float = 0.5,
    fidelity_tokens: int = 8,
    base_cache: dict | None = None,
    device: str | Any = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Sequential editing on a fresh store (``out/store``): apply the edits one by one (prompt and target only),
    measure right after each edit and after the whole stream, roll back a random half, measure rollback
    fidelity and retention; write ``results.json`` and ``edit_metrics.png`` in ``out``.

    ``base_cache`` (a dict) keeps the unedited model's references across calls on the same loaded model.
    Rollback fidelity: the fraction of rolled-back prompts and paraphrases whose greedy output (``fidelity_tokens``
    tokens) equals the unedited model's token for token. Retention: the reliability of the edits kept.
    ``device`` and ``precision`` are the session's (see ``EditSession``); both are checked before ``out`` is made.
    """
    import json
    import random
    import shutil
    import time

    check_edit_precision(precision)
    if device is not None:
        device = resolve_edit_device(str(device))
    rng = random.Random(seed)
    reqs = list(requests)
    rng.shuffle(reqs)
    reqs = reqs[: n or len(reqs)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    t_start = time.perf_counter()
    session = EditSession(store_dir, model=model, editor=editor, editor_config=editor_config, loaded=loaded,
                          quiet=True, device=device, precision=precision)
    try:
        # unedited references, before the first edit (``base_cache`` shares them between editors on one model)
        cache = base_cache if base_cache is not None else {}
        loc_prompts = [[p for p in r.locality] for r in reqs]
        flat_loc = [p for ps in loc_prompts for p in ps]
        todo = [p for p in dict.fromkeys(flat_loc) if ("loc", p) not in cache]
        for p, ref in zip(todo, base_references(session, todo) if todo else []):
            cache[("loc", p)] = ref
        refs_flat = [cache[("loc", p)] for p in flat_loc]
        refs, k = [], 0
        for ps in loc_prompts:
            refs.append(refs_flat[k : k + len(ps)])
            k += len(ps)
        fid_prompts = [[r.prompt, *r.paraphrases] for r in reqs]
        todo = [p for p in dict.fromkeys(p for ps in fid_prompts for p in ps) if ("gen", p, fidelity_tokens) not in cache]
        for p, g in zip(todo, session.generate(todo, max_new_tokens=fidelity_tokens) if todo else []):
            cache[("gen", p, fidelity_tokens)] = g["tokens"]
        base_gen = {p: cache[("gen", p, fidelity_tokens)] for ps in fid_prompts for p in ps}
        pre_rel = session.token_accuracy([r.prompt for r in reqs], [r.target for r in reqs])

        per_edit: list[dict[str, Any]] = []
        ids: list[int] = []
        for i, r in enumerate(reqs):
            t0 = time.perf_counter()
            rec = session.apply(r.prompt, r.target, {"request_id": r.id} if r.id else None)
            dt = time.perf_counter() - t0
            ids.append(rec.id)
            rel = session.token_accuracy([r.prompt], [r.target])[0]
            gen = session.token_accuracy(r.paraphrases, [r.target] * len(r.paraphrases)) if r.paraphrases else []
            loc = locality_scores(session, r.locality, refs[i]) if r.locality else []
            per_edit.append({
                "edit": i + 1, "id": rec.id, "prompt": r.prompt, "target": r.target, "seconds": dt,
                "steps": rec.extra.get("steps"), "reliability": rel,
                "generalization": _mean(gen) if gen else None, "locality": _mean(loc) if loc else None,
            })
            print(f"[{i + 1}/{len(reqs)}] {editor}: {r.prompt!r} -> {r.target!r}  {dt:.1f} s  rel {rel:.2f}"
                  + (f"  gen {_mean(gen):.2f}" if gen else "") + (f"  loc {_mean(loc):.2f}" if loc else ""),
                  file=sys.stderr, flush=True)

        # after the whole stream
        rel_all = session.token_accuracy([r.prompt for r in reqs], [r.target for r in reqs])
        para_p = [p for r in reqs for p in r.paraphrases]
        para_t = [r.target for r in reqs for _ in r.paraphrases]
        gen_all = session.token_accuracy(para_p, para_t) if para_p else []
        loc_all = locality_scores(session, flat_loc, refs_flat) if flat_loc else []

        # roll back a random half
        order = list(range(len(reqs)))
        rng.shuffle(order)
        back = sorted(order[: int(round(len(reqs) * rollback_fraction))])
        kept = [i for i in range(len(reqs)) if i not in set(back)]
        session.rollback([ids[i] for i in back])
        check = [p for i in back for p in fid_prompts[i]]
        after = session.generate(check, max_new_tokens=fidelity_tokens) if check else []
        same = [g["tokens"] == base_gen[g["prompt"]] for g in after]
        retention = session.token_accuracy([reqs[i].prompt for i in kept], [reqs[i].target for i in kept]) if kept else []
        secs = [e["seconds"] for e in per_edit]
        result: dict[str, Any] = {
            "editor": editor,
            "editor_config": session.editor_config,
            "model": session.model_name,
            "device": str(session.device),
            "precision": session.precision,
            "source": source,
            "seed": seed,
            "n_edits": len(reqs),
            "metric_definitions": {
                "reliability": "teacher-forced token accuracy of the target after the edit prompt",
                "generalization": "the same on the paraphrases (never shown to the editor)",
                "locality": "fraction of argmax tokens equal to the unedited model's over its 8-token greedy "
                            "continuation of the locality prompts",
                "fidelity": "fraction of rolled-back prompts and paraphrases whose greedy output equals the "
                            f"unedited model's for {fidelity_tokens} tokens",
                "retention": "reliability of the edits that were not rolled back, after the rollback",
            },
            "pre_edit_reliability": _mean(pre_rel),
            "right_after": {
                "reliability": _mean([e["reliability"] for e in per_edit]),
                "generalization": _mean_opt([e["generalization"] for e in per_edit]),
                "locality": _mean_opt([e["locality"] for e in per_edit]),
            },
            "after_stream": {
                "reliability": _mean(rel_all),
                "generalization": _mean(gen_all) if gen_all else None,
                "locality": _mean(loc_all) if loc_all else None,
            },
            "rollback": {
                "n_rolled_back": len(back),
                "fidelity": _mean([float(x) for x in same]) if same else float("nan"),
                "n_checked": len(same),
                "retention": _mean(retention) if retention else float("nan"),
                "rolled_back_ids": [ids[i] for i in back],
            },
            "seconds_per_edit": {
                "median": float(np.median(secs)), "mean": _mean(secs), "max": float(np.max(secs)),
            },
            "per_edit": per_edit,
            "wall_time_s": time.perf_counter() - t_start,
        }
    finally:
        session.close()
    (out / "results.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "edit_metrics.png")
    return result


def _mean_opt(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return _mean(vals) if vals else None


def _plot(result: dict[str, Any], path: Path) -> None:
    """Running mean of the right-after-edit metrics against the number of edits, with the end-of-stream values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_edit"]
    x = [e["edit"] for e in per]
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"reliability": "C0", "generalization": "C1", "locality": "C2"}
    for name, c in colours.items():
        vals = [e[name] for e in per]
        if all(v is None for v in vals):
            continue
        run, acc, k = [], 0.0, 0
        for v in vals:
            if v is not None:
                acc, k = acc + v, k + 1
            run.append(acc / max(k, 1))
        ax.plot(x, run, color=c, label=f"{name} (right after, running mean)")
        end = result["after_stream"].get(name)
        if end is not None:
            ax.axhline(end, color=c, linestyle="--", linewidth=1, label=f"{name} after all {len(per)} edits")
    ax.set_xlabel("number of edits")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result['editor']}: sequential editing ({result['n_edits']} edits)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- the demo tour
DEMO_FACTS: tuple[tuple[str, str], ...] = (
    ("The capital of Australia is", "Canberra"),
    ("The capital of Turkey is", "Ankara"),
    ("The Night Watch was painted by", "Rembrandt"),
)


def demo_editing(out: Path) -> None:
    """``lifelong demo`` section: three facts SmolLM2 gets wrong, before / after SoLA edits, one rolled back."""
    import shutil

    store = Path(out) / "edit-store"
    if store.exists():
        shutil.rmtree(store)
    prompts = [p for p, _ in DEMO_FACTS] + ["The capital of Canada is"]
    with EditSession(store, quiet=True) as s:
        before = s.generate(prompts, max_new_tokens=6)
        print("Before editing (greedy, SmolLM2-135M):")
        for g in before:
            print(f"  {g['prompt']!r} -> {g['completion']!r}")
        ids = []
        for p, t in DEMO_FACTS:
            rec = s.apply(p, t)
            ids.append(rec.id)
            print(f"  applied edit {rec.id}: {p!r} -> {t!r} ({rec.extra.get('steps')} LoRA steps)")
        after = s.generate(prompts, max_new_tokens=6)
        print("After three SoLA edits (the last prompt is an unedited neighbour):")
        for g in after:
            tag = f"[edit {g['edit_id']}]" if g["edit_id"] is not None else "[base model]"
            print(f"  {g['prompt']!r} -> {g['completion']!r}  {tag}")
        s.rollback([ids[1]])
        print(f"Rolled back edit {ids[1]}:")
        for g, b in zip(s.generate(prompts[:3], max_new_tokens=6), before):
            same = "identical to before editing" if g["tokens"] == b["tokens"] else "edited"
            print(f"  {g['prompt']!r} -> {g['completion']!r}  ({same})")
    print(f"store: {store} (try `lifelong edit list --store {store}`)")
