"""Choosing SoLA's routing threshold on a development set of edits (``lifelong edit calibrate``).

SoLA switches an edit on for a query whose key lies within a cosine distance α of the edit's key. The paper fixes
α without saying how to choose it, and no one value serves every kind of edit: on SmolLM2-135M the bundled
corrections need 0.08 (their unrelated prompts lie close to the edits), WordNet counterfactual edits 0.29
(docs/editing.md, "One threshold does not fit both sets"). So the threshold is chosen per store, on edits like
the ones the store will hold, from the curve that ``bench/edit_routing.py`` draws for research:

- the keys a new store would compute (the model family's editor defaults, then the caller's overrides) for every
  edit prompt, paraphrase and locality prompt of the file;
- all edit keys in one index, as the store's router holds them; a paraphrase is *routed* when its nearest key
  is its own edit's and within α, a locality prompt is *kept* when no key is within α;
- α = the largest threshold (less a margin of 1e-4) at which at least ``locality`` of the locality prompts are kept, and the share of
  paraphrases routed there. A larger α routes more paraphrases and more unrelated prompts; the ROC area of
  (edit, paraphrase) against (edit, locality prompt) distances says how well the key separates them at all.

A threshold chosen on some edits flatters the routing measured on those same edits (their paraphrases and locality
prompts picked it). So the result records what it was calibrated on (``calibrated_on``: the file's SHA-256 and
the ids of the edits used, with their hash), ``edit calibrate --store`` writes that record into a store's meta
data, and ``edit bench --calibration`` / ``bench/edit_scale.py --calibration`` refuse to report on any edit that
is in it (``check_held_out``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lifelong.adapters.lm.model_loading import model_identity
from lifelong.editing.editor import EditRequest, new_store_config
from lifelong.platform import registry
from lifelong.platform.atomic import file_sha256
from lifelong.platform.errors import UserError

KEY_BATCH = 32
MARGIN = 1e-4  # below the distance of the nearest locality prompt that must stay unrouted


def edit_id(request: EditRequest) -> str:
    """An edit's identity across files: its ``id`` field, else a hash of its prompt and target."""
    if request.id:
        return str(request.id)
    return "sha256:" + hashlib.sha256(f"{request.prompt}\x1f{request.target}".encode("utf-8")).hexdigest()[:16]


def provenance(requests: Sequence[EditRequest], source: str | Path | None = None) -> dict[str, Any]:
    """What a calibration ran on: the file (path and SHA-256) and the sorted ids of the edits, with their hash."""
    ids = sorted({edit_id(r) for r in requests})
    path = Path(source) if source else None
    return {"file": str(path) if path else None,
            "file_sha256": file_sha256(path) if path is not None and path.is_file() else None,
            "n_edits": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest(),
            "edit_ids": ids}


def read_calibration(path: str | Path) -> dict[str, Any]:
    """The JSON ``edit calibrate --json`` / ``--out`` wrote; a file that is not one is a ``UserError``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--calibration: cannot read {path} as the JSON of `lifelong edit calibrate` ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("threshold"), (int, float)) \
            or not isinstance((record.get("calibrated_on") or {}).get("edit_ids"), list):
        raise UserError(f"--calibration: {path} has no threshold and calibrated_on.edit_ids; write it with "
                        "`lifelong edit calibrate --file DEV.jsonl --out CAL.json`")
    return record


def store_requests(store: Any) -> list[EditRequest]:
    """The active edits of an edit store as calibration requests: their prompts and targets, and the paraphrases
    and locality prompts ``edit apply --file`` recorded with them (an edit applied without them is left out by
    ``calibrate_threshold``). Their ids are the request ids they were applied with, else ``store:<uid>``."""
    out = []
    for rec in store.active_edits():
        extra = rec.extra or {}
        out.append(EditRequest(prompt=rec.prompt, target=rec.target, paraphrases=list(extra.get("paraphrases") or []),
                               locality=list(extra.get("locality") or []),
                               id=str(extra.get("request_id") or f"store:{rec.uid}")))
    return out


def check_held_out(requests: Sequence[EditRequest], calibration: dict[str, Any], what: str = "the edits") -> None:
    """Refuse (``UserError``) to report on edits the threshold was calibrated on: numbers on them are in-sample."""
    calibrated = set(calibration["calibrated_on"]["edit_ids"])
    shared = [edit_id(r) for r in requests if edit_id(r) in calibrated]
    if shared:
        source = calibration["calibrated_on"].get("file") or "the calibration file"
        raise UserError(f"{len(shared)} of {what} ({len(requests)}) were in the calibration set of {source} (e.g. "
                        f"{shared[0]}); report on held-out edits only (a test split, e.g. --split test)")


def calibrate_threshold(requests: Sequence[EditRequest], model: Any, tokenizer: Any, *,
                        editor_config: dict[str, Any] | None = None, locality: float = 0.98,
                        precision: str = "fp32", source: str | Path | None = None) -> dict[str, Any]:
    """The threshold for SoLA on these edits (see the module docstring), the routing it gives and a curve.

    ``requests`` need paraphrases and locality prompts (records without either are left out; none left is a
    ``UserError``). ``editor_config`` may set the key site (``key_layer``, ``key_module``, ``key_pooling``,
    ``center_keys``); its ``threshold``, if any, is reported beside the calibrated one. ``source`` is the file the
    requests came from (hashed into ``calibrated_on``)."""
    if not 0.0 < locality <= 1.0:
        raise UserError(f"--locality must be in (0, 1], got {locality}")
    usable = [r for r in requests if r.paraphrases and r.locality]
    if not usable:
        raise UserError("calibration needs edits with paraphrases and locality prompts; none of the "
                        f"{len(requests)} records has both")
    config = new_store_config(model, "sola", model_identity(model), editor_config)[0]  # as a new store would have it
    editor = registry.create("editor", "sola", **config)
    editor.precision = precision
    editor.attach(model, tokenizer)
    try:
        edit_keys = _keys(editor, [r.prompt for r in usable])
        para_keys = _keys(editor, [p for r in usable for p in r.paraphrases])
        loc_keys = _keys(editor, [p for r in usable for p in r.locality])
    finally:
        editor.detach()
    para_owner = np.array([i for i, r in enumerate(usable) for _ in r.paraphrases])
    loc_owner = np.array([i for i, r in enumerate(usable) for _ in r.locality])

    para_dist = 1.0 - para_keys @ edit_keys.T  # cosine distances to every edit key, as the router measures them
    loc_dist = 1.0 - loc_keys @ edit_keys.T
    para_nearest, para_nearest_d = para_dist.argmin(1), para_dist.min(1)
    loc_nearest_d = loc_dist.min(1)

    def routed(alpha: float) -> float:
        return float(np.mean((para_nearest == para_owner) & (para_nearest_d <= alpha)))

    def kept(alpha: float) -> float:
        return float(np.mean(loc_nearest_d > alpha))

    threshold = _largest_threshold(loc_nearest_d, locality)
    own_para = para_dist[np.arange(len(para_owner)), para_owner]
    own_loc = loc_dist[np.arange(len(loc_owner)), loc_owner]
    configured = float(editor.config.threshold)
    grid = sorted({*np.quantile(loc_nearest_d, [0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5]).round(4).tolist(),
                   round(threshold, 4), round(configured, 4)})
    return {
        "threshold": threshold,
        "locality_target": locality,
        "locality_kept": kept(threshold),
        "paraphrases_routed": routed(threshold),
        "configured_threshold": configured,
        "configured": {"locality_kept": kept(configured), "paraphrases_routed": routed(configured)},
        "auc": _auc(own_para, own_loc),
        "n_edits": len(usable),
        "n_paraphrases": len(para_owner),
        "n_locality": len(loc_owner),
        "n_left_out": len(requests) - len(usable),
        "key": {k: getattr(editor.config, k) for k in ("layers", "key_layer", "key_module", "key_pooling",
                                                        "center_keys")},
        "curve": [{"threshold": a, "locality_kept": kept(a), "paraphrases_routed": routed(a)} for a in grid],
        "calibrated_on": provenance(usable, source),
    }


def _keys(editor: Any, prompts: list[str]) -> np.ndarray:
    """L2-normalised routing keys (the router compares them by inner product: cosine)."""
    keys = np.concatenate([editor.key_of(prompts[i : i + KEY_BATCH]) for i in range(0, len(prompts), KEY_BATCH)])
    keys = keys.astype(np.float64)
    return keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)


def _largest_threshold(loc_nearest_d: np.ndarray, locality: float) -> float:
    """The largest α (less a margin of ``MARGIN``) with at least ``locality`` of the locality prompts farther than α
    from every key. The margin keeps the first prompt that must stay unrouted outside α also when the router's
    float32 search measures its distance a few ulps smaller than this float64 computation does."""
    d = np.sort(loc_nearest_d)
    allowed = int(np.floor((1.0 - locality) * len(d) + 1e-9))  # prompts that may fall within α
    if allowed >= len(d):
        return 2.0  # every prompt may route: the whole cosine range
    return float(max(0.0, d[allowed] - MARGIN))


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive distance < a negative one), ties counting half: the ROC area (Mann-Whitney form)."""
    neg = np.sort(negative)
    below = np.searchsorted(neg, positive, side="left")  # negatives smaller than each positive
    ties = np.searchsorted(neg, positive, side="right") - below
    greater = len(neg) - below - ties
    return float((greater.sum() + 0.5 * ties.sum()) / (len(positive) * len(neg)))
