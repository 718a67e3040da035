"""Sequential editing at the paper's scale: SoLA, GRACE and FT-L over up to 1,000 edits, in the decoder setting
(SmolLM2-135M on the WordNet counterfactual edit set, ``lifelong/benchmarks/wordnet_edits.py``) and the classifier
setting (the WordNet-gloss classifier of ``lifelong edit train-classifier``, edited on the held-out glosses it
gets wrong). Each (setting, editor) is one ``run_edit_bench`` on a fresh store with checkpoints every ``--every``
edits: ERR, TRR, held-out perplexity (decoder), time per edit, store size, and the routed/unedited generation
time at the end. Prints a markdown table per setting and writes ``summary-<setting>.json`` in ``--out``.

    lifelong edit make-set --source wordnet --split dev --out runs/wn-dev.jsonl
    lifelong edit calibrate --file runs/wn-dev.jsonl --n 250 --out runs/cal-dev250.json
    nice -n 10 python bench/edit_scale.py --settings decoder --n 200 --every 50 --calibration runs/cal-dev250.json \
        --out runs/edit-scale
    nice -n 10 python bench/edit_scale.py --settings classifier --classifier runs/gloss-clf --n 200 --every 50
    nice -n 10 python bench/edit_scale.py --settings decoder --editors sola --set sola.threshold=0.29 --n 1000 --every 100
    python bench/edit_scale.py --plot runs/edit-scale/summary-classifier.json --png docs/img/edit-scale-classifier.png
    python bench/edit_scale.py --aggregate runs/s0/summary-classifier.json runs/s1/summary-classifier.json ...

Each setting's curves of all editors are also drawn side by side in ``curves-<setting>.png`` in ``--out``.

The decoder setting reports on the WordNet ``test`` split by default. ``--calibration CAL.json`` (the output of
``lifelong edit calibrate --out``) gives SoLA its threshold and the ids of the edits that chose it: an edit file
holding any of them is refused in one line (exit 2) before the model loads, since numbers on those edits are
in-sample (``--split all`` after a calibration on dev is such a case).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """One markdown row per (editor, checkpoint): ERR, TRR, perplexity, edit success, cumulative edit time."""
    lines = ["| editor | edits | ERR | TRR | held-out ppl | edit success | s/edit (mean so far) | store MB |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for row in res["curves"]:
            k = row["n_edits"]
            per = row["edit_seconds"] / k if k else None
            mb = row.get("store_bytes")
            lines.append(f"| {res['editor']} | {k} | {_fmt(row['err'])} | {_fmt(row['trr'])} | "
                         f"{_fmt(row.get('perplexity'), 2)} | {_fmt(row.get('edit_success'))} | {_fmt(per, 2)} | "
                         f"{_fmt(mb / 1e6 if mb else None, 2)} |")
    return "\n".join(lines)


def end_table(results: list[dict[str, Any]]) -> str:
    """After the whole stream: generalization, locality, rollback, time per edit, store size, routed overhead."""
    lines = ["| editor | n | reliability | generalization | locality | fidelity | retention | s/edit median | "
             "store MB | routed/unedited gen. time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, rb, ov = r["after_stream"], r["rollback"], r.get("generation_overhead") or {}
        lines.append(f"| {r['editor']} | {r['n_edits']} | {_fmt(s['reliability'])} | {_fmt(s['generalization'])} | "
                     f"{_fmt(s['locality'])} | {_fmt(rb['fidelity'])} ({rb['n_checked']}) | {_fmt(rb['retention'])} | "
                     f"{_fmt(r['seconds_per_edit']['median'], 2)} | {_fmt(r['store_bytes'] / 1e6, 2)} | "
                     f"{_fmt(ov.get('ratio'))} |")
    return "\n".join(lines)


def seeds_table(summaries: list[list[dict[str, Any]]]) -> str:
    """Mean ± standard deviation over runs (one summary per seed) of each editor's figures after the stream."""
    import numpy as np

    fields = [("ERR", lambda r: r["curves"][-1]["err"]), ("TRR", lambda r: r["curves"][-1]["trr"]),
              ("generalization", lambda r: r["after_stream"]["generalization"]),
              ("locality", lambda r: r["after_stream"]["locality"]),
              ("rollback fidelity", lambda r: r["rollback"]["fidelity"]),
              ("retention", lambda r: r["rollback"]["retention"]),
              ("s/edit median", lambda r: r["seconds_per_edit"]["median"]),
              ("store MB", lambda r: r["store_bytes"] / 1e6)]
    by_editor: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        for res in summary:
            by_editor.setdefault(res["editor"], []).append(res)
    lines = ["| editor | runs (seeds) | edits | " + " | ".join(name for name, _ in fields) + " |",
             "|---" * (len(fields) + 3) + "|"]
    for editor, runs in by_editor.items():
        cells = []
        for _, get in fields:
            xs = np.array([get(r) for r in runs if get(r) is not None], dtype=float)
            cells.append("n/a" if not len(xs) else f"{xs.mean():.3f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.3f}")
        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {editor} | {len(runs)} ({seeds}) | {runs[0]['n_edits']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], title: str, png: Path) -> None:
    """ERR and TRR of every editor over the number of edits, one panel each, so the editors compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    styles = [("-", "o", 6), ("--", "s", 4), (":", "^", 4)]  # editors with equal curves stay visible
    for i, res in enumerate(results):
        line, marker, size = styles[i % len(styles)]
        for ax, key in zip(axes, ("err", "trr")):
            pts = [(r["n_edits"], r[key]) for r in res["curves"] if r.get(key) is not None]
            ax.plot([k for k, _ in pts], [v for _, v in pts], linestyle=line, marker=marker, ms=size,
                    label=res["editor"])
    for ax, name in zip(axes, ("ERR: reliability of all edits so far", "TRR: retention-set accuracy")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("number of edits")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; bad input (a file, a calibration, an edit calibrated on) is one line on stderr, exit 2."""
    from lifelong.platform.errors import UserError

    try:
        return _main(argv)
    except UserError as exc:
        print(f"edit_scale.py: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="decoder,classifier")
    ap.add_argument("--editors", default="sola,grace,ft-l")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", help="WordNet edit split for the decoder setting (dev, test, all; "
                                                    "default test: dev is for choosing settings)")
    ap.add_argument("--min-count", type=int, default=1, help="WordNet sense-count floor of the edit set (default 1)")
    ap.add_argument("--model", default="smollm2-135m", help="the decoder setting's model (default smollm2-135m)")
    ap.add_argument("--calibration", default=None, metavar="CAL.json",
                    help="output of `lifelong edit calibrate --out`: SoLA's threshold and the edits it was chosen on "
                         "(refused if the evaluated file holds any of them)")
    ap.add_argument("--classifier", default="runs/gloss-clf", help="folder made by `lifelong edit train-classifier`")
    ap.add_argument("--out", default="runs/edit-scale")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="EDITOR.KEY=VALUE",
                    help="an editor's config key for this bench, e.g. sola.threshold=0.29 (repeatable)")
    ap.add_argument("--plot", default=None, metavar="SUMMARY.json", help="only draw the curves of a finished run")
    ap.add_argument("--png", default=None, help="where --plot writes its figure (default beside the summary)")
    ap.add_argument("--aggregate", nargs="+", default=None, metavar="SUMMARY.json",
                    help="only print mean ± std over finished runs (one summary per seed)")
    args = ap.parse_args(argv)
    if args.aggregate:
        summaries = [json.loads(Path(f).read_text()) for f in args.aggregate]
        kinds = {(r["model_family"], r["n_edits"]) for summary in summaries for r in summary}
        if len(kinds) > 1:
            ap.error(f"--aggregate: the runs differ in setting or length {sorted(kinds)}; give one setting")
        print(seeds_table(summaries))
        return 0
    if args.plot:
        results = json.loads(Path(args.plot).read_text())
        png = Path(args.png) if args.png else Path(args.plot).with_suffix(".png")
        n = max(r["n_edits"] for r in results)
        stem = Path(args.plot).stem  # summary-<setting>
        setting = stem.removeprefix("summary-") if stem.startswith("summary-") else results[0]["model_family"]
        plot(results, f"{setting} setting: {n} sequential edits, seed {results[0]['seed']}", png)
        print(f"wrote {png}")
        return 0
    from lifelong.platform.config import parse_overrides

    per_editor = parse_overrides(args.overrides)  # {"sola": {"threshold": 0.29}}
    for editor, config in per_editor.items():
        if not isinstance(config, dict):
            raise SystemExit(f"--set {editor}={config}: name the editor and its key, as in sola.threshold=0.29")

    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.edits import load_edits
    from lifelong.benchmarks.wordnet_edits import wordnet_edit_set
    from lifelong.benchmarks.wordnet_glosses import heldout_sentences
    from lifelong.editing.bench import run_edit_bench
    from lifelong.editing.calibrate import check_held_out, read_calibration

    calibration = read_calibration(args.calibration) if args.calibration else None

    summary: dict[str, Any] = {"args": vars(args), "settings": {}}
    out = Path(args.out)
    for setting in args.settings.split(","):
        if setting == "decoder":
            path = wordnet_edit_set(args.split, min_count=args.min_count)
            model_name, heldout, retention = args.model, heldout_sentences(200), None
        elif setting == "classifier":
            path = Path(args.classifier) / "edits.jsonl"
            model_name, heldout = args.classifier, None
            retention = [(r["prompt"], r["target"]) for r in map(json.loads, (Path(args.classifier) / "trr.jsonl")
                                                                   .read_text().splitlines())]
        else:
            raise SystemExit(f"unknown setting {setting!r}: decoder or classifier")
        reqs = load_edits(path)
        if calibration is not None:
            check_held_out(reqs, calibration, f"the edits of {path}")
        n = min(args.n, len(reqs))
        loaded = load_causal_lm(model_name)
        cache: dict = {}
        results = []
        for editor in args.editors.split(","):
            print(f"== {setting} / {editor}: {n} edits from {path}", file=sys.stderr, flush=True)
            res = run_edit_bench(editor, reqs, n=n, seed=args.seed, out=out / setting / editor, model=model_name,
                                 loaded=loaded, source=str(path), base_cache=cache, every=args.every,
                                 editor_config=per_editor.get(editor), calibration=calibration,
                                 retention=retention, heldout_text=heldout, device="cpu")
            res.pop("per_edit", None)
            results.append(res)
            summary["settings"].setdefault(setting, []).append(res)
            (out / f"summary-{setting}.json").write_text(json.dumps(summary["settings"][setting], indent=1))
        plot(results, f"{setting} setting: {n} sequential edits, seed {args.seed}", out / f"curves-{setting}.png")
        print(f"\n### {setting}: {n} edits from {path}\n\n{table(results)}\n\n{end_table(results)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
