"""The sequential editing benchmark (``lifelong edit bench``): edits applied one by one on a fresh store,
measured right after each edit, at checkpoints along the stream and after it, then a random half rolled back;
results, a CSV of the curves and plots.

At every checkpoint (each ``every`` edits and at the end) it measures SoLA's paper metrics
(``editing/metrics.py``): ERR over the edits applied so far, TRR on a fixed retention set the edits never touch,
and, for a language model given held-out text, its perplexity. At the end: time per edit, the store's size on
disk and the routed model's generation time against the unedited model's on the same prompts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lifelong.adapters.lm.model_loading import DEFAULT_MODEL
from lifelong.editing.calibrate import check_held_out
from lifelong.editing.editor import EditRequest
from lifelong.editing.metrics import (
    base_references,
    err_rate,
    generation_overhead,
    locality_scores,
    mean_score,
    retention_targets,
    store_bytes,
    trr_rate,
)
from lifelong.editing.session import EditSession, check_edit_precision, resolve_edit_device
from lifelong.platform import registry
from lifelong.platform.errors import UserError
from lifelong.platform.memory import pin_mmap_threshold


def bench_draw(requests: Sequence[EditRequest], n: int | None, seed: int, rollback_fraction: float = 0.5,
               max_fidelity_prompts: int = 200) -> tuple[list[EditRequest], list[int], list[tuple[int, str]]]:
    """The bench's seeded draws, in one place so a finished run can be rebuilt (``bench/edit_rollback_trace.py``):
    the ``n`` edits in order, the positions rolled back at the end, and the (position, prompt) pairs whose
    rollback fidelity is checked (the edit prompt and paraphrases of the rolled-back edits, a seeded sample)."""
    rng = random.Random(seed)
    reqs = list(requests)
    rng.shuffle(reqs)
    reqs = reqs[: n or len(reqs)]
    order = list(range(len(reqs)))  # the half rolled back at the end: the same draw as after the stream
    rng.shuffle(order)
    back = sorted(order[: int(round(len(reqs) * rollback_fraction))])
    return reqs, back, fidelity_prompts(reqs, back, seed, max_fidelity_prompts)


def fidelity_prompts(reqs: Sequence[EditRequest], back: Sequence[int], seed: int, max_fidelity_prompts: int = 200
                     ) -> list[tuple[int, str]]:
    """The (position, prompt) pairs whose rollback fidelity is checked: the prompt and paraphrases of each
    rolled-back edit, a sample seeded by ``seed + 1`` when there are more than ``max_fidelity_prompts``."""
    fid_check = [(i, p) for i in back for p in [reqs[i].prompt, *reqs[i].paraphrases]]
    if len(fid_check) > max_fidelity_prompts:
        fid_check = sorted(random.Random(seed + 1).sample(fid_check, max_fidelity_prompts))
    return fid_check


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
    every: int | None = None,
    retention: Sequence[tuple[str, str | None]] | None = None,
    heldout_text: Sequence[str] | None = None,
    max_fidelity_prompts: int = 200,
    max_retention: int = 200,
    overhead_reps: int = 2,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sequential editing on a fresh store (``out/store``): apply the edits one by one (prompt and target only),
    measure right after each edit and after the whole stream, roll back a random half, measure rollback
    fidelity and retention; write ``results.json`` and ``edit_metrics.png`` in ``out``.

    ``base_cache`` (a dict) keeps the unedited model's references across calls on the same loaded model.
    Rollback fidelity: the fraction of rolled-back prompts and paraphrases whose greedy output (``fidelity_tokens``
    tokens) equals the unedited model's token for token. Retention: the reliability of the edits kept.
    ``device`` and ``precision`` are the session's (see ``EditSession``); both are checked before ``out`` is made.
    ``calibration`` (the JSON of ``edit calibrate``): its threshold is SoLA's unless ``editor_config`` sets one,
    it is recorded in the results and the store, and an edit drawn here that it was calibrated on is a
    ``UserError`` before anything is written (``check_held_out``).

    Curves (``curves`` in the results, ``curves.csv``, ``paper_metrics.png``): after every ``every`` edits
    (default: a tenth of the stream) and after the last, ERR (reliability of all edits so far), TRR on
    ``retention`` (``(prompt, target)`` pairs; a None target is the unedited model's 8-token greedy continuation,
    so TRR is agreement with the unedited model; default: every record's locality prompts, a seeded
    ``max_retention`` of them at most) and the perplexity of
    ``heldout_text`` (a language model only). Rollback fidelity is checked on at most ``max_fidelity_prompts``
    rolled-back prompts and paraphrases (a seeded sample).
    """
    check_edit_precision(precision)
    if device is not None:
        device = resolve_edit_device(str(device))
    pin_mmap_threshold()  # thousands of forwards of varying shapes: keep freed logits out of the heap
    reqs, back, fid_check = bench_draw(requests, n, seed, rollback_fraction, max_fidelity_prompts)
    editor_config, calibrated = _with_calibration(editor, reqs, editor_config, calibration)
    _check_shipped_calibration(editor, model or (None if loaded is not None else DEFAULT_MODEL), reqs, editor_config,
                               calibration)
    if every is not None and every < 1:
        raise UserError(f"--every must be >= 1, got {every}")
    every = every or max(1, len(reqs) // 10)
    checkpoints = sorted({*range(every, len(reqs) + 1, every), len(reqs)})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; name a folder (created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    t_start = time.perf_counter()
    session = EditSession(store_dir, model=model, editor=editor, editor_config=editor_config, loaded=loaded,
                          quiet=True, device=device, precision=precision)
    try:
        if calibrated is not None and session.store is not None:
            session.store.record_calibration(calibrated)
        cache = base_cache if base_cache is not None else {}  # shared between editors on one loaded model
        refs, base_gen = _unedited_references(session, reqs, fid_check, fidelity_tokens, cache)
        pre_rel = session.token_accuracy([r.prompt for r in reqs], [r.target for r in reqs])
        trr_set = retention_targets(session, retention if retention is not None
                                    else _default_retention(requests, seed, max_retention), cache)
        curves: list[dict[str, Any]] = [_checkpoint(session, [], trr_set, heldout_text, 0, 0.0)]
        per_edit, ids = _apply_stream(session, editor, reqs, refs, checkpoints, trr_set, heldout_text, store_dir,
                                      curves)
        ov_prompts = [r.prompt for r in reqs[:4]] + [p for p, _, _ in trr_set[:4]]
        after_stream = _after_stream(session, reqs, refs, curves, store_dir, ov_prompts, overhead_reps)
        rollback = _roll_back_half(session, reqs, ids, back, fid_check, base_gen, fidelity_tokens)
        secs = [e["seconds"] for e in per_edit]
        result: dict[str, Any] = {
            "editor": editor,
            "editor_config": session.editor_config,
            "model": session.model_name,
            "model_family": session.io.family,
            "device": str(session.device),
            "precision": session.precision,
            "source": source,
            "seed": seed,
            "n_edits": len(reqs),
            "calibration": calibrated,
            "metric_definitions": _metric_definitions(fidelity_tokens, max_fidelity_prompts),
            "pre_edit_reliability": mean_score(pre_rel),
            "right_after": {
                "reliability": mean_score([e["reliability"] for e in per_edit]),
                "generalization": _mean_opt([e["generalization"] for e in per_edit]),
                "locality": _mean_opt([e["locality"] for e in per_edit]),
            },
            "after_stream": after_stream.pop("after_stream"),
            "trr_before": curves[0]["trr"],
            "perplexity_before": curves[0].get("perplexity"),
            "n_retention": len(trr_set),
            "n_heldout_text": len(heldout_text or []),
            "curves": curves,
            **after_stream,
            "rollback": rollback,
            "seconds_per_edit": {
                "median": float(np.median(secs)), "mean": mean_score(secs), "max": float(np.max(secs)),
            },
            "per_edit": per_edit,
            "wall_time_s": time.perf_counter() - t_start,
        }
    finally:
        session.close()
    (out / "results.json").write_text(json.dumps(result, indent=1))
    _write_curves_csv(result["curves"], out / "curves.csv")
    _plot(result, out / "edit_metrics.png")
    _plot_curves(result, out / "paper_metrics.png")
    return result


def _default_retention(requests: Sequence[EditRequest], seed: int, limit: int) -> list[tuple[str, None]]:
    """The retention set when none is given: every record's locality prompts (a seeded ``limit`` at most),
    unlabelled (their targets are the unedited model's continuations)."""
    pool = list(dict.fromkeys(p for r in requests for p in r.locality))
    if len(pool) > limit:
        pool = random.Random(seed + 2).sample(pool, limit)
    return [(p, None) for p in pool]


def _unedited_references(session: EditSession, reqs: Sequence[EditRequest], fid_check: list[tuple[int, str]],
                         fidelity_tokens: int, cache: dict) -> tuple[list[list[Any]], dict[str, Any]]:
    """Before the first edit: the unedited model's references of every record's locality prompts, and its greedy
    tokens on the prompts whose rollback fidelity is checked (``cache`` keeps both across editors)."""
    loc_prompts = [list(r.locality) for r in reqs]
    flat_loc = [p for ps in loc_prompts for p in ps]
    todo = [p for p in dict.fromkeys(flat_loc) if ("loc", p) not in cache]
    for p, ref in zip(todo, base_references(session, todo) if todo else []):
        cache[("loc", p)] = ref
    refs_flat = [cache[("loc", p)] for p in flat_loc]
    refs, k = [], 0
    for ps in loc_prompts:
        refs.append(refs_flat[k : k + len(ps)])
        k += len(ps)
    todo = [p for p in dict.fromkeys(p for _, p in fid_check) if ("gen", p, fidelity_tokens) not in cache]
    for p, g in zip(todo, session.generate(todo, max_new_tokens=fidelity_tokens) if todo else []):
        cache[("gen", p, fidelity_tokens)] = g["tokens"]
    return refs, {p: cache[("gen", p, fidelity_tokens)] for _, p in fid_check}


def _apply_stream(session: EditSession, editor: str, reqs: Sequence[EditRequest], refs: list[list[Any]],
                  checkpoints: list[int], trr_set: list[Any], heldout_text: Sequence[str] | None, store_dir: Path,
                  curves: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Apply the edits one by one, each measured right after it; a checkpoint row into ``curves`` at each
    checkpoint. Returns the per-edit rows and the store ids."""
    per_edit: list[dict[str, Any]] = []
    ids: list[int] = []
    edit_seconds = 0.0
    for i, r in enumerate(reqs):
        t0 = time.perf_counter()
        # the benchmark measures edits that do not take instead of refusing them (their reliability shows it)
        rec = session.apply(r.prompt, r.target, {"request_id": r.id} if r.id else None, require_target=False)
        dt = time.perf_counter() - t0
        edit_seconds += dt
        ids.append(rec.id)
        rel = session.token_accuracy([r.prompt], [r.target])[0]
        gen = session.token_accuracy(r.paraphrases, [r.target] * len(r.paraphrases)) if r.paraphrases else []
        loc = locality_scores(session, r.locality, refs[i]) if r.locality else []
        per_edit.append({
            "edit": i + 1, "id": rec.id, "prompt": r.prompt, "target": r.target, "seconds": dt,
            "steps": rec.extra.get("steps"), "reliability": rel,
            "generalization": mean_score(gen) if gen else None, "locality": mean_score(loc) if loc else None,
            "locality_each": loc,  # per locality prompt, in the record's order (a set may mark near neighbours)
        })
        print(f"[{i + 1}/{len(reqs)}] {editor}: {r.prompt!r} -> {r.target!r}  {dt:.1f} s  rel {rel:.2f}"
              + (f"  gen {mean_score(gen):.2f}" if gen else "") + (f"  loc {mean_score(loc):.2f}" if loc else ""),
              file=sys.stderr, flush=True)
        if i + 1 in checkpoints:
            row = _checkpoint(session, reqs[: i + 1], trr_set, heldout_text, i + 1, edit_seconds)
            row["edit_success"] = mean_score([e["reliability"] for e in per_edit])
            row["store_bytes"] = store_bytes(store_dir)
            curves.append(row)
            print(f"  after {i + 1} edits: ERR {row['err']:.3f}  TRR {_fmt(row['trr'])}"
                  + (f"  ppl {row['perplexity']:.2f}" if row.get("perplexity") is not None else ""),
                  file=sys.stderr, flush=True)
    return per_edit, ids


def _after_stream(session: EditSession, reqs: Sequence[EditRequest], refs: list[list[Any]],
                  curves: list[dict[str, Any]], store_dir: Path, ov_prompts: list[str],
                  overhead_reps: int) -> dict[str, Any]:
    """After the whole stream: every edit's reliability, generalization and locality, the store's size and the
    routed model's generation time against the unedited model's (rounds interleaved, the edits switched off and
    on around each unedited round, so a change of the machine's load during the stream does not enter the ratio)."""
    rel_all = session.token_accuracy([r.prompt for r in reqs], [r.target for r in reqs])
    para_p = [p for r in reqs for p in r.paraphrases]
    para_t = [r.target for r in reqs for _ in r.paraphrases]
    gen_all = session.token_accuracy(para_p, para_t) if para_p else []
    flat_loc = [p for r in reqs for p in r.locality]
    loc_all = locality_scores(session, flat_loc, [x for rs in refs for x in rs]) if flat_loc else []
    return {
        "after_stream": {
            "reliability": mean_score(rel_all),
            "generalization": mean_score(gen_all) if gen_all else None,
            "locality": mean_score(loc_all) if loc_all else None,
            "locality_each": loc_all,  # per locality prompt, the records' prompts in order
            "err": curves[-1]["err"],
            "trr": curves[-1]["trr"],
            "perplexity": curves[-1].get("perplexity"),
            "edit_perplexity": session.perplexity([f"{r.prompt} {r.target}" for r in reqs]),
        },
        "store_bytes": store_bytes(store_dir),
        "generation_overhead": generation_overhead(session, ov_prompts, reps=overhead_reps) if overhead_reps > 0 else None,
    }


def _roll_back_half(session: EditSession, reqs: Sequence[EditRequest], ids: list[int], back: list[int],
                    fid_check: list[tuple[int, str]], base_gen: dict[str, Any], fidelity_tokens: int) -> dict[str, Any]:
    """Roll back the half drawn at the start; fidelity of the rolled-back prompts, retention of the kept edits."""
    kept = [i for i in range(len(reqs)) if i not in set(back)]
    session.rollback([ids[i] for i in back])
    after = session.generate([p for _, p in fid_check], max_new_tokens=fidelity_tokens) if fid_check else []
    same = [g["tokens"] == base_gen[g["prompt"]] for g in after]
    retention_kept = session.token_accuracy([reqs[i].prompt for i in kept], [reqs[i].target for i in kept]) if kept else []
    return {
        "n_rolled_back": len(back),
        "fidelity": mean_score([float(x) for x in same]) if same else float("nan"),
        "n_checked": len(same),
        "retention": mean_score(retention_kept) if retention_kept else float("nan"),
        "rolled_back_ids": [ids[i] for i in back],
    }


def _metric_definitions(fidelity_tokens: int, max_fidelity_prompts: int) -> dict[str, str]:
    return {
        "reliability": "teacher-forced token accuracy of the target after the edit prompt (a classifier: "
                       "predicted class == target)",
        "generalization": "the same on the paraphrases (never shown to the editor)",
        "locality": "fraction of argmax tokens equal to the unedited model's over its 8-token greedy "
                    "continuation of the locality prompts",
        "fidelity": "fraction of rolled-back prompts and paraphrases whose greedy output equals the "
                    f"unedited model's for {fidelity_tokens} tokens (at most {max_fidelity_prompts} checked)",
        "retention": "reliability of the edits that were not rolled back, after the rollback",
        "err": "edit retention rate: mean reliability of all edits applied so far, at a checkpoint",
        "trr": "test retention rate: token accuracy on the retention set at a checkpoint (targets: labels "
               "given with the set, else the unedited model's 8-token greedy continuation)",
        "perplexity": "exp of the mean next-token loss of the held-out text (language models only)",
        "edit_perplexity": "exp of the mean next-token loss of every edit's prompt and target after the stream",
        "edit_success": "mean reliability right after each edit, over the edits so far",
    }


def _with_calibration(editor: str, reqs: Sequence[EditRequest], editor_config: dict[str, Any] | None,
                      calibration: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The editor config with the calibrated threshold (SoLA, unless set), and what to record of the calibration;
    refuses edits the calibration ran on."""
    if calibration is None:
        return editor_config, None
    check_held_out(reqs, calibration, "the edits drawn for this bench")
    config = dict(editor_config or {})
    if editor == "sola":
        config.setdefault("threshold", float(calibration["threshold"]))
    on = {k: v for k, v in calibration["calibrated_on"].items() if k != "edit_ids"}
    record = {"threshold": float(calibration["threshold"]), "locality_target": calibration.get("locality_target"),
              "calibrated_on": on, "held_out_checked": len(reqs)}
    return config or None, record


def _check_shipped_calibration(editor: str, model: str | None, reqs: Sequence[EditRequest],
                               editor_config: dict[str, Any] | None, calibration: dict[str, Any] | None) -> None:
    """Without a calibration of its own and a threshold, the store gets the editor's default for the model, which
    may have been calibrated on some of these edits (SoLA's on WordNet development edits): refuse them too."""
    if calibration is not None or "threshold" in (editor_config or {}) or model is None:
        return
    name = str(model)
    for record in getattr(registry.get("editor", editor).factory, "calibrations_for", lambda _: [])(name):
        check_held_out(reqs, record, f"the edits drawn for this bench (the default {editor} threshold of {name} "
                                     "was calibrated on them)")


def _checkpoint(session: EditSession, applied: Sequence[EditRequest], trr_set: Sequence[tuple[str, str]],
                heldout_text: Sequence[str] | None, n_edits: int, edit_seconds: float) -> dict[str, Any]:
    """ERR over ``applied``, TRR over ``trr_set`` and the held-out perplexity, now."""
    row: dict[str, Any] = {"n_edits": n_edits, "edit_seconds": round(edit_seconds, 3),
                           "err": err_rate(session, applied) if applied else None,
                           "trr": trr_rate(session, trr_set) if trr_set else None}
    if heldout_text:
        row["perplexity"] = session.perplexity(heldout_text)
    return row


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


CURVE_COLUMNS = ("n_edits", "err", "trr", "perplexity", "edit_success", "edit_seconds", "store_bytes")


def _write_curves_csv(curves: Sequence[dict[str, Any]], path: Path) -> None:
    lines = [",".join(CURVE_COLUMNS)]
    for row in curves:
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in CURVE_COLUMNS))
    path.write_text("\n".join(lines) + "\n")


def _plot_curves(result: dict[str, Any], path: Path) -> None:
    """ERR and TRR (left axis) and the held-out perplexity (right axis) against the number of edits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in (("err", "C0"), ("trr", "C1"), ("edit_success", "C3")):
        pts = [(r["n_edits"], r[name]) for r in curves if r.get(name) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color=c, label=name.upper() if name != "edit_success" else "edit success")
    ax.set_xlabel("number of edits")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    pts = [(r["n_edits"], r["perplexity"]) for r in curves if r.get("perplexity") is not None]
    if pts:
        ax2 = ax.twinx()
        ax2.plot(*zip(*pts), marker="s", color="C2", linestyle="--", label="held-out perplexity")
        ax2.set_ylabel("perplexity")
        ax2.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{result['editor']} on {result['model_family']}: {result['n_edits']} sequential edits")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_opt(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return mean_score(vals) if vals else None


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
