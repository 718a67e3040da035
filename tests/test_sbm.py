"""Generative side branches (``sbm-*``) on a tiny random Llama: the judge, best-of-N, SFT of the LoRA adapter
(the loss falls, the shared model is untouched), the saved adapter and its checks, the cached branch outputs,
srm reading SBM texts, and ``reward sbm-train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _llm_fixtures import tiny_llama  # noqa: F401  (fixture)

from lifelong.adapters.lm.model_loading import weights_sha256
from lifelong.adapters.lm.model_pool import get_llm
from lifelong.benchmarks.preferences import PreferencePair
from lifelong.cli.main import main
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create, get
from lifelong.scorers.branches import sbm, sbm_train
from lifelong.scorers.branches import BranchCache, make_branches, run_branches

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    PreferencePair("What is the capital of Canada?", "Ottawa is the capital of Canada.", "OTTAWA!!! OTTAWA!!!", "style"),
    PreferencePair("Name a colour in one word.", "Blue.", "Blue is a colour that many people like a lot.", "style"),
    PreferencePair("How do I boil an egg?", "Boil it for nine minutes.", "boil it boil it boil it", "style"),
]


def _train(model: Path, out: Path, **kw) -> dict:
    opts = dict(llm=str(model), candidates=3, max_new_tokens=6, epochs=4, lr=2e-2, batch_size=6, lora_rank=4)
    cfg = sbm_train.SBMTrainConfig(**{**opts, **kw})
    return sbm_train.train_sbm("sbm-style", PAIRS, out, config=cfg)


def test_the_judge_and_best_of_n() -> None:
    assert sbm_train.overlap_f1("the capital is Ottawa", "Ottawa is the capital of Canada") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert sbm_train.overlap_f1("nothing shared", "Ottawa capital") == 0.0
    kept = sbm_train.best_of_n([["Sydney", "Canberra is the capital", "capital"]], ["capital: Canberra"])
    assert kept[0][0] == "Canberra is the capital" and kept[0][1] == pytest.approx(1.0)
    assert kept[0][2] == pytest.approx((0.0 + 1.0 + 2 / 3) / 3)
    assert sbm_train.strip_label("fact-check: known fact 'x'") == "known fact 'x'"
    # every SBM is a registered branch whose judge's reference is a registered branch too
    for name, dim in sbm.DIMENSIONS.items():
        assert get("branch", name).config is sbm.SBMConfig
        get("branch", dim.reference)


def test_train_saves_an_adapter_the_branch_uses_and_the_shared_model_is_untouched(tiny_llama: Path,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    base, _ = get_llm(str(tiny_llama), "cpu")
    before = weights_sha256(base)
    out = tmp_path / "sbm-style"
    report = _train(tiny_llama, out)
    assert report["n_texts"] == 6 and report["candidates"] == 3
    assert report["judge_best_mean"] >= report["judge_candidates_mean"]  # the kept text is the judge's best
    assert report["sft_loss_last_epoch"] < report["sft_loss_first_epoch"]  # SFT fits the kept texts
    assert weights_sha256(base) == before  # LoRA went into a private copy
    meta = sbm.read_adapter(out)
    assert meta["dimension"] == "sbm-style" and meta["base_model"]["weights_sha256"] == before
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(str(out / sbm.ADAPTER_FILE)))

    trained, = make_branches(["sbm-style"], llm=str(tiny_llama), branch_config={"sbm-style": {"adapter": str(out),
                                                                                              "max_new_tokens": 6}})
    plain, = make_branches(["sbm-style"], llm=str(tiny_llama), branch_config={"sbm-style": {"max_new_tokens": 6}})
    assert trained.fingerprint() != plain.fingerprint()  # the cache is keyed by the adapter
    items = [(p.prompt, p.chosen) for p in PAIRS]
    cache = BranchCache(tmp_path / "c.sqlite")
    outs = run_branches([trained], items, cache)["sbm-style"]
    assert all(o.text.startswith("sbm-style: ") and len(o.features) == 1 for o in outs)
    merged, _ = sbm.sbm_model(str(tiny_llama), str(out), "cpu")
    assert weights_sha256(merged) != before  # the adapter is merged into the copy the branch writes with


def test_outputs_are_cached_and_srm_reads_them(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    opts = {"branches": ["sbm-style"], "branch_config": {"sbm-style": {"max_new_tokens": 5}}, "backbone": "lm",
            "llm": str(tiny_llama), "lora_layers": 1, "lm_epochs": 2, "cache_dir": str(tmp_path), "device": "cpu"}
    rm = create("scorer", "srm", **opts)
    rm.fit(PAIRS)
    res = rm.score(PAIRS[0].prompt, PAIRS[0].chosen)
    assert set(res.contributions) == {"text", "sbm-style"} and res.branch_texts["sbm-style"].startswith("sbm-style:")

    def no_generation(*a, **k):
        raise AssertionError("generated although the output was cached")

    monkeypatch.setattr(sbm, "generate", no_generation)
    again = create("scorer", "srm", **opts)  # a new scorer over the same cache file: nothing is generated
    again.fit(PAIRS)
    assert again.score(PAIRS[0].prompt, PAIRS[0].chosen).branch_texts == res.branch_texts


def test_bad_adapters_are_one_line(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "a"
    _train(tiny_llama, out, seed=1, candidates=1, epochs=1, max_new_tokens=3)
    with pytest.raises(UserError, match="an adapter for 'sbm-style', not for 'sbm-fact-check'"):
        make_branches(["sbm-fact-check"], llm=str(tiny_llama), branch_config={"sbm-fact-check": {"adapter": str(out)}})
    with pytest.raises(UserError, match="not an SBM adapter folder"):
        make_branches(["sbm-style"], branch_config={"sbm-style": {"adapter": str(tmp_path)}})
    data = (out / sbm.ADAPTER_FILE).read_bytes()
    (out / sbm.ADAPTER_FILE).write_bytes(data[:-8] + b"\x00" * 8)
    with pytest.raises(UserError, match="does not match the checksum"):
        sbm.read_adapter(out)


def test_cli_sbm_train(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in PAIRS))
    out = tmp_path / "adapter"
    rc = main(["reward", "sbm-train", "--branch", "sbm-style", "--data", str(data), "--pairs", "2", "--out", str(out),
               "--json", "--set", f"llm={tiny_llama}", "--set", "candidates=2", "--set", "max_new_tokens=4",
               "--set", "epochs=1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)["training"]
    assert report["n_pairs"] == 2 and (out / "sbm.json").is_file() and (out / "adapter.safetensors").is_file()
    rc = main(["reward", "sbm-train", "--branch", "sbm-quality", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown SBM branch 'sbm-quality'" in err
    rc = main(["reward", "sbm-train", "--branch", "sbm-style", "--out", str(tmp_path / "x"), "--set", "candidates=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "candidates must be >= 1" in err and not (tmp_path / "x").exists()
