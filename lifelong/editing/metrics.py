"""Edit metrics over a session, following EasyEdit's definitions.

Reliability and generalization are the teacher-forced token accuracy of the target after the edit prompt / its
paraphrases; locality is, for unrelated prompts, the fraction of positions where the edited model's argmax equals
the *unedited* model's argmax over the unedited model's own 8-token greedy continuation. The unedited references
are computed before the first edit, from a model that no editor has touched (or with every edit switched off,
which the editors guarantee restores the base model exactly).
"""

from __future__ import annotations

import contextlib
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
        "reliability": mean_score(rel),
        "generalization": mean_score(gen) if gen else None,
        "locality": mean_score(loc) if loc else None,
        "n_edits": len(requests),
    }


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
