"""Why a finished ``edit bench`` run's rollback fidelity is below 1: every checked prompt, re-generated from the
saved store and from the unedited model, and for each that differs, the edit the store's router sends it to.

``run_edit_bench`` rolls back a seeded half of its edits and checks (``fidelity``) that the rolled-back prompts and
paraphrases give the unedited model's greedy tokens again. A prompt can differ for two reasons: the rollback was
not exact (its own edit still answers: a bug), or the prompt is routed to *another* edit that is still active
(the router's threshold at work, not a rollback failure). This script rebuilds what the run checked from the run
itself: the store's edits in the order they were applied, each matched to its record of the edit file named in
``results.json`` (for the paraphrases), the edits the store marks rolled back (checked against the ones
``results.json`` lists), and the bench's own sample of the prompts to check (``fidelity_prompts``, as
``bench_draw`` takes it). It then generates every checked prompt with the store in force and with no store, and
sorts each differing prompt by where the router sends it. Any bench run works, whatever drew its edits
(``lifelong edit bench``, ``bench/edit_scale.py``, ``bench/edit_routing.py --results``).

    nice -n 10 python bench/edit_rollback_trace.py runs/edit-scale-1000/decoder/sola [--json]

Prints the counts (checked, differing, routed to an active edit, to a rolled-back edit, to none) and one line per
differing prompt. Exit 2 with one line on bad input (a folder that is not a finished run, an edit file that no
longer holds the store's edits, a store whose rolled-back edits are not the run's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def trace(run: Path, device: str = "cpu", fidelity_tokens: int = 8, max_fidelity_prompts: int = 200
          ) -> dict[str, Any]:
    """The trace of one finished run (see the module docstring)."""
    from lifelong.benchmarks.edits import load_edits
    from lifelong.editing.bench import fidelity_prompts
    from lifelong.editing.session import EditSession
    from lifelong.platform.errors import UserError

    results_path = run / "results.json"
    if not results_path.is_file() or not (run / "store").is_dir():
        raise UserError(f"{run}: not the folder of a finished edit bench (results.json and store/ expected)")
    res = json.loads(results_path.read_text())
    source, seed = res.get("source"), int(res["seed"])
    if not source or not Path(source).is_file():
        raise UserError(f"{results_path}: its edit file {source!r} is not here; the paraphrases cannot be found")
    in_file = load_edits(source)
    file_by_id = {r.id: r for r in in_file if r.id}
    file_by_text = {(r.prompt, r.target): r for r in in_file}
    with EditSession(run / "store", model=res["model"], device=device, quiet=True, create=False,
                     readonly=True) as edited:
        records = sorted(edited.store.all_edits(), key=lambda r: r.id)
        reqs = [file_by_id.get(r.extra.get("request_id")) or file_by_text.get((r.prompt, r.target)) for r in records]
        missing = [r.prompt for r, q in zip(records, reqs) if q is None]
        if missing:
            raise UserError(f"{run}: {len(missing)} of the store's edits are not in {source} "
                            f"(e.g. {missing[0]!r}); the edit file changed since the run")
        ids = [r.id for r in records]
        rolled = {r.id for r in records if not r.active}
        if sorted(rolled) != sorted(res["rollback"]["rolled_back_ids"]):
            raise UserError(f"{run}: the store's rolled-back edits are not the ones results.json lists")
        back = [i for i, r in enumerate(records) if not r.active]
        fid_check = fidelity_prompts(reqs, back, seed, max_fidelity_prompts)
        prompts = [p for _, p in fid_check]
        after = edited.generate(prompts, max_new_tokens=fidelity_tokens)
        by_id = {r.id: r for r in records}
    with EditSession(None, model=res["model"], device=device, quiet=True) as base:
        before = base.generate(prompts, max_new_tokens=fidelity_tokens)
    differing = []
    for (i, prompt), a, b in zip(fid_check, after, before):
        if a["tokens"] == b["tokens"]:
            continue
        eid = a["edit_id"]
        where = "none" if eid is None else ("rolled-back" if eid in rolled else "active")
        differing.append({"prompt": prompt, "own_edit": ids[i], "routed_to": eid, "routed_kind": where,
                          "routed_prompt": by_id[eid].prompt if eid in by_id else None,
                          "edited": a["completion"], "unedited": b["completion"]})
    counts = {k: sum(d["routed_kind"] == k for d in differing) for k in ("active", "rolled-back", "none")}
    return {"run": str(run), "editor": res["editor"], "n_edits": len(records), "n_rolled_back": len(back),
            "checked": len(fid_check), "differing": len(differing),
            "fidelity": 1 - len(differing) / len(fid_check) if fid_check else None,
            "fidelity_in_results": res["rollback"]["fidelity"], "routed": counts, "prompts": differing}


def main(argv: list[str] | None = None) -> int:
    """Print the trace of a run; bad input is one line on stderr, exit 2."""
    from lifelong.platform.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the --out folder of `edit bench` (or bench/edit_scale.py's <out>/<setting>/<editor>)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = trace(Path(args.run), device=args.device)
    except UserError as exc:
        print(f"edit_rollback_trace.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    r = out["routed"]
    print(f"{out['editor']}, {out['n_edits']} edits, {out['n_rolled_back']} rolled back: {out['checked']} prompts "
          f"checked, {out['differing']} differ from the unedited model (fidelity {out['fidelity']:.3f}; the run "
          f"recorded {out['fidelity_in_results']:.3f})")
    print(f"  of those: {r['active']} routed to another edit still active, {r['rolled-back']} to a rolled-back "
          f"edit, {r['none']} routed to no edit")
    for d in out["prompts"]:
        print(f"  {d['prompt']!r} (own edit {d['own_edit']}) -> {d['routed_kind']} edit {d['routed_to']} "
              f"{d['routed_prompt']!r}: {d['edited']!r} instead of {d['unedited']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
