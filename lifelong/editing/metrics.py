"""Edit metrics over a session: EasyEdit's reliability, generalization and locality, and the retention rates and
perplexity of SoLA's paper (Luo et al., arXiv 2603.11239; GRACE's evaluation protocol before it).

Reliability and generalization are the teacher-forced token accuracy of the target after the edit prompt / its
paraphrases; locality is, for unrelated prompts, the fraction of positions where the edited model's argmax equals
the *unedited* model's argmax over the unedited model's own 8-token greedy continuation. The unedited references
are computed before the first edit, from a model that no editor has touched (or with every edit switched off,
which the editors guarantee restores the base model exactly).

The paper's sequential-editing metrics, measured after k edits:

- **ERR** (edit retention rate): the reliability of all k edits applied so far, measured now (an early edit that a
  later one overwrote counts as lost);
- **TRR** (test retention rate): the accuracy on a retention set that no edit touches. With labels (a classifier's
  held-out test split, or prompts given with their answers) it is the accuracy against the labels, so TRR before
  any edit is the unedited model's accuracy. Without labels (a language model's held-out prompts) the label is the
  *unedited* model's own 8-token greedy continuation and TRR is the fraction of positions where the edited model's
  argmax equals the unedited model's there: 1.0 before any edit, the next-token agreement with the unedited model
  after (the paper's TRR on ZsRE is the same idea: accuracy on the held-out questions, relative to the original
  model's behaviour);
- **perplexity** of held-out text (the paper's hallucination setting on GPT2-XL): ``exp`` of the mean next-token
  loss, each text routed at its first token (language models only).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lifelong.editing.editor import EditRequest
from lifelong.editing.session import EditSession

LOCALITY_TOKENS = 8


def base_references(session: EditSession, locality_prompts: Sequence[str], n_tokens: int = LOCALITY_TOKENS
                    ) -> list[tuple[str, np.ndarray]]:
    """The unedited model's greedy continuation of each locality prompt and its teacher-forced argmax on it.

    Must be computed before any edit is switched on (the session's model is still the base model).
    """
    refs = []
    # batched: the continuation is only the text the teacher-forced argmax (the reference) is taken over
    gens = session.generate_unedited(locality_prompts, max_new_tokens=n_tokens)
    if session.io.family == "classifier":  # its "continuation" is the predicted class name
        conts = [g["completion"] for g in gens]
    else:
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


def evaluate_store(session: EditSession, requests: Sequence[EditRequest],
                   retention: Sequence[tuple[str, str | None]] | None = None,
                   heldout_text: Sequence[str] | None = None) -> dict[str, Any]:
    """Reliability, generalization and locality of the session's model on ``requests``; ERR (here: the
    reliability of the store's active edits), TRR on ``retention`` and the perplexity of ``heldout_text`` when
    given.

    Locality (and TRR without labels) needs the unedited model: it is obtained by switching every active edit off
    for the reference pass and back on afterwards (the editors guarantee that this restores the base model
    exactly).
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
    res: dict[str, Any] = {
        "reliability": mean_score(rel),
        "generalization": mean_score(gen) if gen else None,
        "locality": mean_score(loc) if loc else None,
        "n_edits": len(requests),
        "err": mean_score(rel),
    }
    if retention:
        if any(t is None for _, t in retention):
            with _edits_off(session, list(session.loaded_ids)):
                trr_set = retention_targets(session, retention)
        else:
            trr_set = retention_targets(session, retention)
        res["trr"] = trr_rate(session, trr_set)
        res["n_retention"] = len(trr_set)
    if heldout_text:
        res["perplexity"] = session.perplexity(heldout_text)
        res["n_heldout_text"] = len(heldout_text)
    return res


#: one retention item: (prompt, target text, the unedited model's argmax over it or None for a labelled item)
RetentionItem = tuple[str, str, Any]


def retention_targets(session: EditSession, retention: Sequence[tuple[str, str | None]],
                      cache: dict | None = None) -> list[RetentionItem]:
    """The retention set ready to score: a labelled item keeps its label; an unlabelled one gets the unedited
    model's 8-token greedy continuation and its argmax over it (``base_references``; the session's model must be
    the unedited one now). ``cache`` shares the references with the locality prompts (``("loc", prompt)``)."""
    cache = cache if cache is not None else {}
    todo = [p for p, t in dict.fromkeys(retention) if t is None and ("loc", p) not in cache]
    for p, ref in zip(todo, base_references(session, todo) if todo else []):
        cache[("loc", p)] = ref
    out: list[RetentionItem] = []
    for p, t in retention:
        if t is None:
            cont, pred = cache[("loc", p)]
            out.append((p, cont, pred))
        else:
            out.append((p, t, None))
    return out


def trr_rate(session: EditSession, items: Sequence[RetentionItem]) -> float:
    """TRR now: token accuracy against the labels, agreement with the unedited model's argmax where unlabelled."""
    labelled = [(p, t) for p, t, ref in items if ref is None]
    ref_items = [(p, t, ref) for p, t, ref in items if ref is not None]
    scores = session.token_accuracy([p for p, _ in labelled], [t for _, t in labelled]) if labelled else []
    if ref_items:
        scores += locality_scores(session, [p for p, _, _ in ref_items], [(t, ref) for _, t, ref in ref_items])
    return mean_score(scores)


def err_rate(session: EditSession, applied: Sequence[EditRequest]) -> float:
    """ERR now: the mean reliability of every edit in ``applied``."""
    return mean_score(session.token_accuracy([r.prompt for r in applied], [r.target for r in applied]))


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of an edit store (its database, adapter files and router index)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def generation_overhead(session: EditSession, prompts: Sequence[str], *, reps: int = 2,
                        max_new_tokens: int = 16) -> dict[str, Any]:
    """Median seconds of ``session.generate(prompts)`` with the edits in force and with them switched off, over
    ``reps`` interleaved rounds, and their ratio: both sides in the same minutes, so the machine's load is shared."""
    routed, base = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.generate(prompts, max_new_tokens=max_new_tokens)
        routed.append(time.perf_counter() - t0)
        with _edits_off(session, list(session.loaded_ids)):
            t0 = time.perf_counter()
            session.generate(prompts, max_new_tokens=max_new_tokens)
            base.append(time.perf_counter() - t0)
    b, r = float(np.median(base)), float(np.median(routed))
    return {"routed_s": r, "base_s": b, "ratio": r / b if b else None, "n_prompts": len(prompts),
            "max_new_tokens": max_new_tokens, "reps": reps, "interleaved": True}


@contextlib.contextmanager
def _edits_off(session: EditSession, ids: Sequence[int]) -> Iterator[None]:
    if not ids or session.store is None:  # nothing is switched on: the model is the base model already
        yield
        return
    recs = {r.id: r for r in session.store.active_edits()}
    session.editor.deactivate(ids)
    try:
        yield
    finally:
        for i in ids:
            rec = recs.get(i)
            if rec is not None:
                session.editor.activate(rec.id, rec.key, session.store.load_tensors(rec), rec.target)


def mean_score(xs: Sequence[float]) -> float:
    """The mean of ``xs``, NaN for none (a metric with nothing to measure)."""
    return float(np.mean(xs)) if len(xs) else float("nan")
