"""SoLA's paper metrics in ``edit bench`` and ``edit eval``: ERR and TRR curves over the number of edits, the
perplexity of held-out text, store size and generation overhead, on a tiny Llama; ERR, TRR and
the store's growth checked against values worked out apart from the bench (greedy generation of the same edits
re-applied, a direct forward, the LoRA's size)."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch
from _bench import load_bench_script
from _llm_fixtures import TINY_SOLA, tiny_llama  # noqa: F401  (session fixture)

from lifelong.cli.main import main
from lifelong.editing.bench import run_edit_bench
from lifelong.editing.editor import EditRequest
from lifelong.editing.session import EditSession

REQS = [
    EditRequest("The capital of Australia is", "Canberra", ["Australia's capital is"], ["The capital of Spain is"]),
    EditRequest("The Night Watch was painted by", "Rembrandt", [], ["Cats like to"]),
    EditRequest("The author of Hamlet is", "Shakespeare", [], ["Dogs like to"]),
]
HELDOUT = ["The cat sat on the mat and looked out of the window.", "Rivers flow into the sea."]
SOLA = {"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 30, "lr": 0.05}


def _manual_perplexity(model, tok, texts):
    """exp of the mean next-token loss, one unpadded text per forward (the definition, computed directly)."""
    nll, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False).input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
        n += ids.shape[1] - 1
    return math.exp(nll / n)


def _manual_token_accuracy(model, tok, prompt, target):
    """Teacher-forced argmax accuracy over the target's tokens (a space between prompt and target), by one direct
    forward of the unedited model: the definition, outside the session's code."""
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    t_ids = tok(prompt + " " + target, add_special_tokens=False).input_ids[len(p_ids):]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + t_ids])).logits[0]
    pred = logits[len(p_ids) - 1 : len(p_ids) + len(t_ids) - 1].argmax(-1).tolist()
    return sum(a == b for a, b in zip(pred, t_ids)) / len(t_ids)


def test_bench_curves_err_trr_perplexity(tmp_path, tiny_llama):  # noqa: F811
    retention = [("Birds can", None), ("The sun rises in the", "east")]
    res = run_edit_bench("sola", REQS, seed=0, out=tmp_path / "b", model=str(tiny_llama), editor_config=SOLA,
                         every=2, retention=retention, heldout_text=HELDOUT, overhead_reps=1, device="cpu")
    curves = res["curves"]
    assert [r["n_edits"] for r in curves] == [0, 2, 3]  # before, every 2, and the end
    assert curves[0]["err"] is None
    with EditSession(None, model=str(tiny_llama), device="cpu") as base:
        # TRR before any edit, worked out by a direct forward: the unlabelled item agrees with the unedited model
        # by definition (1.0), the labelled one scores its plain token accuracy against "east"
        east = _manual_token_accuracy(base.model, base.tokenizer, "The sun rises in the", "east")
        assert curves[0]["trr"] == pytest.approx((1.0 + east) / 2, abs=1e-9)
        assert math.isclose(res["perplexity_before"], _manual_perplexity(base.model, base.tokenizer, HELDOUT),
                            rel_tol=1e-4)
    # ERR from another path: the same edits applied again, in the bench's order, to a new store (same config and
    # seed), and after 2 and 3 edits each prompt's greedy continuation compared with its target's tokens. An edit
    # whose greedy continuation starts with its target has teacher-forced accuracy 1, one that differs in its
    # first token accuracy below 1; the unedited model reproduces none of the three
    order = [REQS[[r.prompt for r in REQS].index(e["prompt"])] for e in res["per_edit"]]
    targets = {}
    with EditSession(tmp_path / "again", model=str(tiny_llama), editor="sola", editor_config=SOLA,
                     device="cpu") as again:
        for r in REQS:
            targets[r.prompt] = again.tokenizer(" " + r.target, add_special_tokens=False).input_ids

        def reproduced(reqs):
            outs = again.generate([r.prompt for r in reqs], max_new_tokens=4)
            return [o["tokens"][: len(targets[r.prompt])] == targets[r.prompt] for o, r in zip(outs, reqs)]

        assert not any(reproduced(order))
        expected = []
        for k, r in enumerate(order, 1):
            again.apply(r.prompt, r.target, require_target=False)
            if k in (2, 3):
                hits = reproduced(order[:k])
                assert all(hits)  # so every token of every target is reproduced: the ERR is exactly 1
                expected.append(sum(hits) / k)
    assert [r["err"] for r in curves[1:]] == expected == [1.0, 1.0]
    assert res["after_stream"]["perplexity"] == curves[-1]["perplexity"] > 0
    # the third edit adds at least its LoRA weights to the store: rank 4 A and B around mlp.down_proj, float32
    out_f, in_f = base.model.model.layers[1].mlp.down_proj.weight.shape
    assert curves[-1]["store_bytes"] - curves[1]["store_bytes"] >= 4 * 4 * (in_f + out_f)
    ov = res["generation_overhead"]
    assert ov["ratio"] == pytest.approx(ov["routed_s"] / ov["base_s"])
    rows = list(csv.DictReader((tmp_path / "b" / "curves.csv").open()))
    assert [int(r["n_edits"]) for r in rows] == [0, 2, 3] and float(rows[-1]["err"]) == curves[-1]["err"]
    assert (tmp_path / "b" / "paper_metrics.png").stat().st_size > 1000


def test_eval_and_bench_take_trr_file_and_heldout_text(tmp_path, capsys, tiny_llama):  # noqa: F811
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"prompt": r.prompt, "target": r.target, "locality": r.locality}) + "\n"
                             for r in REQS))
    trr = tmp_path / "trr.jsonl"
    trr.write_text(json.dumps({"prompt": "Birds can"}) + "\n" + json.dumps({"prompt": "Fish live in"}) + "\n")
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(HELDOUT) + "\n")
    code = main(["edit", "eval", "--model", str(tiny_llama), "--file", str(edits), "--trr-file", str(trr),
                 "--heldout-text", str(text), "--device", "cpu", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["trr"] == 1.0 and res["n_retention"] == 2 and res["perplexity"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"target": "x"}\n')
    code = main(["edit", "eval", "--model", str(tiny_llama), "--file", str(edits), "--trr-file", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl:1" in err and "'prompt'" in err and len(err.strip().splitlines()) == 1
    code = main(["edit", "bench", "--editor", "sola", "--file", str(edits), "--every", "0", "--out",
                 str(tmp_path / "never")])
    assert code == 2 and "--every" in capsys.readouterr().err and not (tmp_path / "never").exists()
    code = main(["edit", "bench", "--editor", "sola", "--file", str(edits), "--n", "2", "--every", "1",
                 "--trr-file", str(trr), "--out", str(tmp_path / "b"), "--model", str(tiny_llama), *TINY_SOLA,
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "ERR" in out and "TRR" in out
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["n_edits"] for r in res["curves"]] == [0, 1, 2] and res["n_retention"] == 2


def test_generate_unedited_batched_equals_one_by_one_and_refuses_routed_edits(tmp_path, tiny_llama):  # noqa: F811
    # prompts of different lengths, so the batch is left-padded; the references must be each prompt's own decode
    prompts = ["Birds can", "The sun rises in the", "A", "The capital of Spain is", "Rivers flow into the"]
    with EditSession(tmp_path / "s", model=str(tiny_llama), editor="sola", editor_config=SOLA,
                     device="cpu") as s:
        single = [g["tokens"] for g in s.generate(prompts, max_new_tokens=8)]
        batched = [g["tokens"] for g in s.generate_unedited(prompts, max_new_tokens=8, batch_size=3)]
        assert batched == single and all(len(t) > 0 for t in single)
        s.apply(REQS[0].prompt, REQS[0].target)
        assert s.generate([REQS[0].prompt])[0]["edit_id"] is not None
        with pytest.raises(RuntimeError, match="in force"):
            s.generate_unedited([REQS[0].prompt])


@pytest.mark.parametrize("pre_shuffled", [False, True])
def test_rollback_trace_rebuilds_the_runs_draw_and_its_fidelity(tmp_path, tiny_llama, capsys, pre_shuffled):  # noqa: F811
    """``bench/edit_rollback_trace.py`` on a finished bench: the same prompts checked and the same fidelity, each
    differing prompt sorted by where the router sends it (never to a rolled-back edit); also for a run given its
    own seeded subset of the file (as ``bench/edit_routing.py --results`` gives it), which the trace rebuilds from
    the store, not from a second draw on the file."""

    src = tmp_path / "edits.jsonl"
    src.write_text("".join(json.dumps({"prompt": r.prompt, "target": r.target, "paraphrases": r.paraphrases,
                                       "locality": r.locality}) + "\n" for r in REQS))
    from lifelong.benchmarks.edits import load_edits

    requests = load_edits(src)
    if pre_shuffled:
        random.Random(1).shuffle(requests)
        requests = requests[: len(requests) - 1]
    res = run_edit_bench("sola", requests, seed=1, out=tmp_path / "b", model=str(tiny_llama),
                         editor_config=SOLA, source=str(src), overhead_reps=1, device="cpu")
    trace = load_bench_script("edit_rollback_trace")
    out = trace.trace(tmp_path / "b")
    assert out["checked"] == res["rollback"]["n_checked"] > 0 and out["n_rolled_back"] == res["rollback"]["n_rolled_back"]
    assert out["fidelity"] == pytest.approx(res["rollback"]["fidelity"])
    assert sum(out["routed"].values()) == out["differing"] and out["routed"]["rolled-back"] == 0
    assert trace.main([str(tmp_path / "b")]) == 0 and "prompts checked" in capsys.readouterr().out
    assert trace.main([str(tmp_path)]) == 2 and "not the folder of a finished edit bench" in capsys.readouterr().err
    applied = requests[0]  # an edit the store holds, whichever the draw was
    src.write_text(src.read_text().replace(json.dumps(applied.target), json.dumps(applied.target + " changed")))
    assert trace.main([str(tmp_path / "b")]) == 2 and "the edit file changed" in capsys.readouterr().err
