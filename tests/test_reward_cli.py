"""`lifelong reward train | score | eval` from the command line: a tiny round trip and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.cli.main import main

PAIRS = [
    ("What is the capital of Australia?", "The capital of Australia is Canberra.", "The capital of Australia is Sydney.", "factual"),
    ("What is the capital of Canada?", "Ottawa is the capital of Canada.", "OTTAWA IS THE CAPITAL OF CANADA!!!", "style"),
    ("How do I boil an egg?", "Boil it for about nine minutes, then cool it.", "Egg the boil minutes nine for.", "fluency"),
    ("How can I make tea?", "Steep a tea bag in hot water for four minutes.", "Rome is the capital of Italy.", "relevance"),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "Hamlet was written by Christopher Marlowe.", "factual"),
    ("What is the capital of Japan?", "Tokyo is the capital of Japan.", "Tokyo. Tokyo. Tokyo. Tokyo.", "style"),
]


def _write(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r, "dimension": d}) + "\n"
                            for p, c, r, d in pairs))
    return path


def test_train_score_eval_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _write(tmp_path / "prefs.jsonl")
    out = tmp_path / "rm"
    rc = main(["reward", "train", "--scorer", "srm", "--data", str(data), "--out", str(out), "--json",
               "--set", "branches=[semantic,style]", "--set", "epochs=20", "--set", f"cache_dir={tmp_path}"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    trained = json.loads(captured.out)
    assert trained["scorer"] == "srm" and trained["training"]["n_pairs"] == len(PAIRS)
    assert (out / "config.json").is_file() and (out / "head.safetensors").is_file()

    rc = main(["reward", "score", "--model", str(out), "--prompt", PAIRS[1][0], "--response", PAIRS[1][2], "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    scored = json.loads(captured.out)  # stdout is only JSON
    assert set(scored["contributions"]) == {"text", "semantic", "style"}
    assert sum(scored["contributions"].values()) == pytest.approx(scored["reward"], abs=1e-4)
    assert "shouting in capitals" in scored["branch_texts"]["style"]

    rc = main(["reward", "eval", "--model", str(out), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["n_pairs"] == len(PAIRS)
    assert set(report["per_dimension"]) == {"factual", "style", "fluency", "relevance"}
    assert report["per_dimension"]["style"]["n_pairs"] == 2
    assert report["accuracy"] >= 5 / 6  # the training pairs themselves, after 20 epochs

    rc = main(["reward", "score", "--model", str(out), "--prompt", PAIRS[0][0], "--response", PAIRS[0][1]])
    text = capsys.readouterr().out
    assert rc == 0 and "reward:" in text and "[style]" in text and "contributions" in text


@pytest.mark.parametrize("argv, message", [
    (["reward", "train", "--scorer", "srmm", "--out", "{tmp}/o"], "unknown scorer 'srmm'; did you mean srm?"),
    (["reward", "train", "--scorer", "srm", "--set", "branches=[semantic,smell]", "--out", "{tmp}/o"],
     "unknown branch 'smell'; allowed values: semantic, fact-check, style, fluency, quality"),
    (["reward", "train", "--scorer", "scalar-rm", "--set", "epocs=3", "--out", "{tmp}/o"],
     "unknown config key 'epocs'"),
    (["reward", "train", "--scorer", "scalar-rm", "--data", "{tmp}/bad.jsonl", "--out", "{tmp}/o"],
     "bad.jsonl:2: missing field 'rejected'"),
    (["reward", "train", "--scorer", "scalar-rm", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/o"],
     "none.jsonl: preference file not found"),
    (["reward", "eval", "--model", "{tmp}/o"], "not a trained reward model"),
    (["reward", "score", "--model", "{tmp}/o", "--prompt", "p", "--response", "r"], "not a trained reward model"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, argv, message) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": "c"}\n')
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1 and err.startswith("lifelong: error:")
    assert not (tmp_path / "o").exists()  # nothing half-written
