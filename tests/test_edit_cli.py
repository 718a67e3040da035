"""``lifelong edit ...`` end to end on a tiny random Llama (the plumbing, not the model's knowledge), plus the
edit-file loaders (JSON Lines, ZsRE, CounterFact) and their line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _llm_fixtures import TINY_SOLA, tiny_llama, tiny_llama_other  # noqa: F401
from lifelong.benchmarks.edits import load_edits
from lifelong.cli.main import main
from lifelong.platform.errors import UserError
from lifelong.editing.store import ADAPTER_DIR, EditStore


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


EDITS = [
    {"prompt": "The capital of Australia is", "target": "Canberra", "paraphrases": ["Australia's capital is"],
     "locality": ["The capital of Spain is"], "id": "a"},
    {"prompt": "The Night Watch was painted by", "target": "Rembrandt", "locality": ["Cats like to"]},
]


@pytest.mark.parametrize("row, message", [
    ("{not json", r":2: invalid JSON"),
    ({"prompt": "x"}, r":2: missing required field 'target'"),
    ({"prompt": "x", "target": "  "}, r":2: field 'target' is empty"),
    ({"prompt": 3, "target": "y"}, r":2: field 'prompt' must be a string"),
    ({"prompt": "x", "target": "y", "paraphrases": "p"}, None),  # a single string is taken as one paraphrase
    ({"prompt": "x", "target": "y", "locality": [1]}, r":2: field 'locality' must be a list of strings"),
    ([1, 2], r":2: each edit must be a JSON object"),
])
def test_loader_errors_name_line_and_field(tmp_path, row, message):
    f = _write(tmp_path / "e.jsonl", [EDITS[0], row])
    if message is None:
        assert load_edits(f)[1].paraphrases == ["p"]
        return
    with pytest.raises(UserError, match=message):
        load_edits(f)


def test_zsre_and_counterfact_loaders(tmp_path):
    zsre = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
             "pred": "Trinity College", "rephrase": "What university did Watts Humphrey take part in?",
             "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
             "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
             "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?"}]
    (tmp_path / "zsre.json").write_text(json.dumps(zsre))  # MEND ships ZsRE as one JSON array
    z = load_edits(tmp_path / "zsre.json")
    assert (z[0].prompt, z[0].target) == ("What university did Watts Humphrey attend?", "University of Michigan")
    assert z[0].paraphrases == ["What university did Watts Humphrey take part in?"]
    assert z[0].locality[0].startswith("nq question: who played")
    cf = [{"case_id": 0, "pararel_idx": 2796, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux"},
        "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"]}]
    _write(tmp_path / "cf.jsonl", cf)
    c = load_edits(tmp_path / "cf.jsonl")
    assert (c[0].prompt, c[0].target, c[0].id) == ("The mother tongue of Danielle Darrieux is", "English", "0")
    assert c[0].locality == cf[0]["neighborhood_prompts"]
    bad = dict(cf[0], requested_rewrite={"prompt": "The mother tongue of {} is", "subject": "X"})
    _write(tmp_path / "bad.jsonl", [bad])
    with pytest.raises(UserError, match=r"bad.jsonl:1: field 'requested_rewrite.target_new'"):
        load_edits(tmp_path / "bad.jsonl")


def test_edit_cli_end_to_end(tmp_path, capsys, tiny_llama, tiny_llama_other):  # noqa: F811
    model = str(tiny_llama)
    store = str(tmp_path / "store")
    edits = _write(tmp_path / "edits.jsonl", EDITS)

    # malformed file: one clear error with the line number, nothing applied, exit 2
    bad = _write(tmp_path / "bad.jsonl", [EDITS[0], {"prompt": "x", "target": ""}])
    code, out, err = run(capsys, "edit", "apply", "--store", store, "--model", model, "--file", str(bad), "--json")
    assert code == 2 and "bad.jsonl:2: field 'target' is empty" in err and out == ""
    assert len(err.strip().splitlines()) == 1
    # a prompt longer than the model's context (64 tokens here): refused with the line number, nothing applied
    long = _write(tmp_path / "long.jsonl", [EDITS[0], {"prompt": "word " * 80, "target": "x"}])
    code, _, err = run(capsys, "edit", "apply", "--store", store, "--model", model, "--file", str(long), *TINY_SOLA)
    assert code == 2 and "long.jsonl:2: prompt and target are" in err and "context of 64" in err
    if Path(store, "edits.sqlite").exists():
        with EditStore.open(store) as s:
            assert s.all_edits() == []

    code, out, err = run(capsys, "edit", "apply", "--store", store, "--model", model, "--file", str(edits),
                         "--json", *TINY_SOLA)
    assert code == 0, err
    applied = json.loads(out)["applied"]
    assert [(a["id"], a["prompt"], a["target"]) for a in applied] == [
        (1, EDITS[0]["prompt"], "Canberra"), (2, EDITS[1]["prompt"], "Rembrandt")]

    code, out, _ = run(capsys, "edit", "list", "--store", store, "--json")
    rows = json.loads(out)
    assert [(r["id"], r["status"], r["target"]) for r in rows] == [(1, "active", "Canberra"), (2, "active", "Rembrandt")]

    prompts = _write(tmp_path / "prompts.txt", [EDITS[1]["prompt"], "Cats like to", EDITS[0]["prompt"]])
    code, out, err = run(capsys, "edit", "generate", "--store", store, "--file", str(prompts),
                         "--max-new-tokens", "3", "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == [EDITS[1]["prompt"], "Cats like to", EDITS[0]["prompt"]]
    assert lines[0]["edit_id"] == 2 and lines[2]["edit_id"] == 1
    assert lines[0]["completion"].startswith(" Rembrandt")

    code, out, err = run(capsys, "edit", "eval", "--store", store, "--file", str(edits), "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert set(ev) >= {"reliability", "generalization", "locality", "n_edits"}
    assert ev["n_edits"] == 2 and ev["reliability"] == 1.0 and 0.0 <= ev["locality"] <= 1.0

    code, _, err = run(capsys, "edit", "rollback", "--store", store, "7")
    assert code == 2 and "no edit with id 7" in err
    code, out, _ = run(capsys, "edit", "rollback", "--store", store, "1", "--json")
    assert code == 0 and json.loads(out) == {"rolled_back": [1], "already_rolled_back": []}
    code, out, _ = run(capsys, "edit", "rollback", "--store", store, "1", "--json")
    assert code == 0 and json.loads(out) == {"rolled_back": [], "already_rolled_back": [1]}
    code, out, _ = run(capsys, "edit", "generate", "--store", store, "--prompt", EDITS[0]["prompt"], "--json")
    assert json.loads(out)["edit_id"] is None

    # another model on this store: refused
    code, _, err = run(capsys, "edit", "generate", "--store", store, "--model", str(tiny_llama_other),
                       "--prompt", "hi", "--json")
    assert code == 2 and "was made for model" in err
    # another editor or another config on this store: refused
    code, _, err = run(capsys, "edit", "apply", "--store", store, "--editor", "grace", "--prompt", "a", "--target", "b")
    assert code == 2 and "holds 'sola' edits" in err

    # a corrupted adapter: that edit is refused with a clear error, the others still work
    with EditStore.open(store) as s:
        rec = s.get(2)
    f = Path(store) / ADAPTER_DIR / rec.adapter_file
    f.write_bytes(f.read_bytes()[:-7] + b"garbage")
    code, out, err = run(capsys, "edit", "generate", "--store", store, "--prompt", EDITS[1]["prompt"], "--json")
    assert code == 0 and "edit 2: adapter file" in err and "corrupted" in err
    assert json.loads(out)["edit_id"] is None
    code, out, _ = run(capsys, "edit", "list", "--store", store, "--json")
    assert "corrupted" in json.loads(out)[1]["problem"]


def test_edit_bench_writes_results_and_plot(tmp_path, capsys, tiny_llama):  # noqa: F811
    edits = _write(tmp_path / "edits.jsonl", EDITS)
    out_dir = tmp_path / "bench"
    code, out, err = run(capsys, "edit", "bench", "--editor", "sola", "--file", str(edits), "--n", "2",
                         "--seed", "1", "--out", str(out_dir), "--model", str(tiny_llama), *TINY_SOLA, "--json")
    assert code == 0, err
    res = json.loads((out_dir / "results.json").read_text())
    assert res == json.loads(out)
    assert res["n_edits"] == 2 and res["rollback"]["n_rolled_back"] == 1
    assert res["rollback"]["fidelity"] == 1.0  # SoLA rollback restores the base model exactly
    assert len(res["per_edit"]) == 2 and res["seconds_per_edit"]["median"] > 0
    assert (out_dir / "edit_metrics.png").stat().st_size > 1000
    code, _, err = run(capsys, "edit", "bench", "--editor", "nope", "--file", str(edits))
    assert code == 2 and "nope" in err
    code, _, err = run(capsys, "edit", "bench", "--editor", "sola", "--file", str(edits), "--n", "5")
    assert code == 2 and "--n must be between 1 and 2" in err


def test_generate_and_eval_without_store_use_the_base_model(tmp_path, capsys, tiny_llama, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    edits = _write(tmp_path / "edits.jsonl", EDITS)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(capsys, "edit", "generate", "--model", str(tiny_llama), "--prompt", EDITS[0]["prompt"],
                         "--max-new-tokens", "3", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["edit_id"] is None and row["prompt"] == EDITS[0]["prompt"]
    code, out, err = run(capsys, "edit", "eval", "--model", str(tiny_llama), "--file", str(edits), "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["store"] is None and ev["n_edits"] == 2 and ev["n_not_in_store"] == 0
    assert ev["locality"] == 1.0  # the base model against itself
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store was made
