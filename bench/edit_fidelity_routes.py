"""Why is a finished ``edit bench`` run's rollback fidelity below 1? For each rolled-back edit of the run's store,
its prompt and its paraphrases (from the edit file) are generated with the store's kept edits in force and again
with every edit switched off (the unedited model), ``--tokens`` greedy tokens each, one prompt at a time as the
bench does. Each prompt is counted as: routed to a kept edit (the router sends it there, as it would any prompt
within the threshold of that edit's key) or not; and its output equal to the unedited model's or not. A prompt
that no edit routes must give the unedited output exactly (SoLA's guarantee); the script says how many do not.

    python bench/edit_fidelity_routes.py --store bench/out/edit-natural-default/sola-0/store \\
        --file lifelong/benchmarks/data/edits-natural.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def main() -> None:
    from lifelong.benchmarks.edits import load_edits
    from lifelong.editing.metrics import _edits_off
    from lifelong.editing.session import EditSession

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, help="the store of a finished edit bench run (out/store)")
    ap.add_argument("--file", required=True, help="the edit file the run drew its edits from")
    ap.add_argument("--tokens", type=int, default=8, help="greedy tokens compared (the bench's fidelity_tokens)")
    args = ap.parse_args()
    by_prompt = {r.prompt: r for r in load_edits(args.file)}
    session = EditSession(args.store, create=False, quiet=True)
    try:
        store = session.store
        back = [r for r in store.all_edits() if r.status == "rolled_back"]
        prompts = [p for r in back for p in [r.prompt, *by_prompt[r.prompt].paraphrases]]
        edited = session.generate(prompts, max_new_tokens=args.tokens)
        with _edits_off(session, list(session.loaded_ids)):
            base = session.generate(prompts, max_new_tokens=args.tokens)
        kept = {r.id: r.prompt for r in store.active_edits()}
    finally:
        session.close()
    counts: Counter = Counter()
    examples = []
    for e, b in zip(edited, base):
        routed = e["edit_id"] is not None
        same = e["tokens"] == b["tokens"]
        counts[(routed, same)] += 1
        if routed and len(examples) < 5:
            examples.append({"prompt": e["prompt"], "routed_to": kept.get(e["edit_id"], e["edit_id"]),
                             "completion": e["completion"]})
    print(f"{len(back)} rolled-back edits, {len(prompts)} prompts and paraphrases ({args.tokens} tokens each)")
    print(f"  not routed, output = unedited: {counts[(False, True)]}")
    print(f"  not routed, output != unedited: {counts[(False, False)]}   (must be 0)")
    print(f"  routed to a kept edit, output = unedited: {counts[(True, True)]}")
    print(f"  routed to a kept edit, output != unedited: {counts[(True, False)]}")
    print(f"  fidelity over all: {(counts[(False, True)] + counts[(True, True)]) / max(len(prompts), 1):.3f}")
    print(json.dumps(examples, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
