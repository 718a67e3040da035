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
    (["reward", "train", "--scorer", "srmm", "--out", "{tmp}/o"], "unknown scorer 'srmm'; did you mean srm"),
    (["reward", "train", "--scorer", "srm", "--set", "branches=[semantic,smell]", "--out", "{tmp}/o"],
     "unknown branch 'smell'; allowed values: semantic, fact-check, style, fluency, quality"),
    (["reward", "train", "--scorer", "scalar-rm", "--set", "epocs=3", "--out", "{tmp}/o"],
     "unknown config key 'epocs'"),
    (["reward", "train", "--scorer", "scalar-rm", "--data", "{tmp}/bad.jsonl", "--out", "{tmp}/o"],
     "bad.jsonl:2: missing field 'rejected'"),
    (["reward", "train", "--scorer", "scalar-rm", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/o"],
     "none.jsonl does not exist"),
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


@pytest.mark.parametrize("setup, message", [
    ({}, "no config.json"),
    ({"config.json": "{not json"}, "config.json is not valid JSON"),
    ({"config.json": '{"format_version": 1}'}, "config.json names no scorer"),
    ({"config.json": '["srm"]'}, "config.json names no scorer"),
    ({"config.json": '{"scorer": "no-such-rm"}'}, "saved by a scorer that is not installed: unknown scorer 'no-such-rm'"),
    ({"config.json": '{"format_version": 1, "scorer": "srm", "config": {}}'}, "needs config.json and head.safetensors"),
    ({"config.json": '{"format_version": 7, "scorer": "srm"}', "head.safetensors": ""}, "not a reward model config of format version 1"),
])
def test_a_folder_that_is_not_a_saved_scorer_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                setup: dict, message: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in setup.items():
        (folder / name).write_text(text)
    rc = main(["reward", "score", "--model", str(folder), "--prompt", "p", "--response", "r"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("lifelong: error:") and err.count("\n") == 1
    assert str(folder) in err and message in err, err


THIRD_PARTY = """
import json
from dataclasses import dataclass
from pathlib import Path

from lifelong.platform.registry import register


@dataclass
class ConstantConfig:
    value: float = 0.0

    def validate(self):
        if self.value != self.value:
            raise ValueError("value must be a number")


@dataclass
class Result:
    reward: float
    contributions: dict
    branch_texts: dict

    def as_dict(self):
        return {"reward": self.reward, "contributions": self.contributions, "branch_texts": self.branch_texts}


@register("scorer", "constant-rm", config=ConstantConfig, summary="a third-party scorer: a constant plus the length")
class ConstantScorer:
    def __init__(self, config):
        self.config = config

    @classmethod
    def load(cls, folder):
        return cls(ConstantConfig(**json.loads((Path(folder) / "config.json").read_text())["config"]))

    def score(self, prompt, response):
        length = 0.01 * len(response)
        return Result(self.config.value + length, {"bias": self.config.value, "length": length}, {"length": "long"})
"""


def test_a_third_party_scorer_is_loaded_through_the_registry(tmp_path: Path, cli) -> None:
    """A scorer registered by an installed distribution's entry point, not imported by the CLI, scores a saved folder."""
    site = tmp_path / "site"
    (site / "constant_rm-0.1.dist-info").mkdir(parents=True)
    (site / "constant_rm-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: constant-rm\nVersion: 0.1\n")
    (site / "constant_rm-0.1.dist-info" / "entry_points.txt").write_text("[lifelong.plugins]\nconstant-rm = constant_rm\n")
    (site / "constant_rm.py").write_text(THIRD_PARTY)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"scorer": "constant-rm", "config": {"value": 0.5}}))
    env = {"PYTHONPATH": str(site), "LIFELONG_DISABLE_PLUGIN_AUTOLOAD": ""}

    result = cli("reward", "score", "--model", str(model), "--prompt", "p", "--response", "x" * 30, env=env)
    assert result.code == 0, result.stderr
    assert "reward: +0.8000  (constant-rm)" in result.stdout and "[length] long" in result.stdout
