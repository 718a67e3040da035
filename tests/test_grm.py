"""The generative RM baseline (``grm``) on a tiny random Llama: the A/B margin is the judge's first-token
log-probability, batching does not change it, swapping the order cancels position bias, judgements are cached,
and the CLI trains nothing, evaluates a folder or the bare name, and refuses ``score``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _llm_fixtures import tiny_llama  # noqa: F401  (fixture)

from lifelong.benchmarks.preferences import PreferencePair
from lifelong.cli.main import main
from lifelong.cli.reward import load_saved_scorer
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create
from lifelong.scorers import grm as grm_mod
from lifelong.scorers.lm_backbone import chat_prompt, first_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    PreferencePair("What is the capital of Australia?", "Canberra.", "Sydney is the capital.", "factual"),
    PreferencePair("How do I boil an egg?", "Boil it for nine minutes.", "Egg the boil.", "fluency"),
    PreferencePair("Name a colour.", "Blue.", "I would rather talk about the weather today.", "relevance"),
]


def _grm(model: Path, tmp_path: Path, **kw) -> grm_mod.GenerativeRewardModel:
    return create("scorer", "grm", llm=str(model), cache_dir=str(tmp_path), device="cpu", **kw)


def _margin_by_hand(model_path: Path, judge: grm_mod.GenerativeRewardModel, p: str, a: str, b: str) -> float:
    """log P(first answer token is A) - log P(... is B), one unpadded forward of the judge prompt outside grm."""
    from lifelong.adapters.lm.model_pool import get_llm

    model, tok = get_llm(str(model_path), torch.device("cpu"))
    a_ids, b_ids = first_token_ids(tok, ["A", " A"]), first_token_ids(tok, ["B", " B"])
    ids = tok(chat_prompt(tok, judge._message(p, a, b)), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    return float(torch.logsumexp(logp[a_ids], -1) - torch.logsumexp(logp[b_ids], -1))


def _report_by_hand(model_path: Path, judge: grm_mod.GenerativeRewardModel) -> dict[str, float]:
    """Accuracy, order agreement and first-order accuracy on PAIRS from margins worked out by hand."""
    first = [_margin_by_hand(model_path, judge, q.prompt, q.chosen, q.rejected) for q in PAIRS]
    swapped = [_margin_by_hand(model_path, judge, q.prompt, q.rejected, q.chosen) for q in PAIRS]
    n = len(PAIRS)
    return {"accuracy": sum((f - s) / 2 > 0 for f, s in zip(first, swapped)) / n,
            "order_agreement": sum((f > 0) == (s < 0) for f, s in zip(first, swapped)) / n,
            "first_order_accuracy": sum(f > 0 for f in first) / n}


def test_margin_is_the_first_answer_tokens_log_probability(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    judge = _grm(tiny_llama, tmp_path, batch_size=2)
    triples = [(p.prompt, p.chosen, p.rejected) for p in PAIRS]
    got = judge.margins(triples)  # batched, padded to the longest of each batch
    for (p, a, b), m in zip(triples, got):
        assert m == pytest.approx(_margin_by_hand(tiny_llama, judge, p, a, b), abs=1e-4)  # unpadded: the same


def test_both_orders_cancel_position_bias(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    judge = _grm(tiny_llama, tmp_path)
    p = PAIRS[0]
    ab, ba = judge.compare(p.prompt, p.chosen, p.rejected), judge.compare(p.prompt, p.rejected, p.chosen)
    assert ab.preference == pytest.approx(-ba.preference, abs=1e-6)  # antisymmetric whatever the slot bias
    assert ab.preference == pytest.approx((ab.margins["a_first"] - ab.margins["b_first"]) / 2)
    one = _grm(tiny_llama, tmp_path, both_orders=False).compare(p.prompt, p.chosen, p.rejected)
    assert one.preference == pytest.approx(ab.margins["a_first"])  # the biased one-order judge, for comparison
    report = judge.evaluate(PAIRS)
    by_hand = _report_by_hand(tiny_llama, judge)
    for key in ("accuracy", "order_agreement", "first_order_accuracy"):
        assert report[key] == pytest.approx(by_hand[key]), key
    assert set(report["per_dimension"]) == {"factual", "fluency", "relevance"}


def test_judgements_are_cached_on_disk(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    first = _grm(tiny_llama, tmp_path).evaluate(PAIRS)
    fresh = _grm(tiny_llama, tmp_path)  # a new scorer over the same cache file

    def no_model(*a, **k):
        raise AssertionError("the model ran although every judgement was cached")

    monkeypatch.setattr(grm_mod, "get_llm", no_model)
    assert fresh.evaluate(PAIRS) == first
    with pytest.raises(AssertionError, match="model ran"):
        fresh.compare("A new question?", "yes", "no")


def test_cli_train_writes_a_config_only_eval_reads_it_score_is_refused(tiny_llama: Path, tmp_path: Path,  # noqa: F811
                                                                      capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                        "dimension": p.dimension}) + "\n" for p in PAIRS))
    out = tmp_path / "grm"
    rc = main(["reward", "train", "--scorer", "grm", "--data", str(data), "--out", str(out),
               "--set", f"llm={tiny_llama}", "--set", f"cache_dir={tmp_path}", "--set", "device=cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "nothing to train" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    rc = main(["reward", "eval", "--model", str(out), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    by_hand = _report_by_hand(tiny_llama, _grm(tiny_llama, tmp_path / "fresh"))
    assert report["n_pairs"] == 3 and report["accuracy"] == pytest.approx(by_hand["accuracy"])
    assert report["order_agreement"] == pytest.approx(by_hand["order_agreement"])
    rc = main(["reward", "score", "--model", str(out), "--prompt", "Q?", "--response", "A."])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "compares two responses" in err


def test_the_bare_name_is_a_model_and_bad_options_are_one_line(tmp_path: Path) -> None:
    name, judge = load_saved_scorer("grm")  # built with its defaults; the LM is loaded only when it judges
    assert name == "grm" and isinstance(judge, grm_mod.GenerativeRewardModel)
    with pytest.raises(UserError, match="not a trained reward model"):
        load_saved_scorer("srm")  # a scorer that needs training is not accepted by name
    with pytest.raises(UserError, match="max_chars must be >= 16"):
        create("scorer", "grm", max_chars=3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"scorer": "grm", "config": "x"}))
    with pytest.raises(UserError, match="not a grm config"):
        grm_mod.GenerativeRewardModel.load(tmp_path / "bad")
