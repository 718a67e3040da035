"""The structural reward model: Bradley-Terry loss, each side branch, the cache, contributions, save/load.

The branch internals are tested through ``lifelong.scorers.branches``, the package code outside the scorers uses
too; ``srm`` only registers the two scorers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.benchmarks.preferences import (
    BUNDLED_FACTS,
    PreferencePair,
    bundled_preferences,
    load_facts,
    load_preferences,
)
from lifelong.platform.errors import UserError
from lifelong.platform.registry import create, get
from lifelong.scorers import branches as sb
from lifelong.scorers import srm
from lifelong.scorers.base import Scorer, ScoreResult, load_scorer
from lifelong.scorers.reward_model import RewardHead, RewardModel, bradley_terry_loss

CAPITAL_Q = "What is the capital of Australia?"


# ------------------------------------------------------------------------------------------- Bradley-Terry
def test_bradley_terry_loss_and_gradients_on_hand_made_scores() -> None:
    chosen = torch.tensor([2.0, 0.0, -1.0], requires_grad=True)
    rejected = torch.tensor([1.0, 0.0, 1.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    deltas = [1.0, 0.0, -2.0]
    expected = sum(math.log1p(math.exp(-d)) for d in deltas) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/ds_c of -log σ(s_c - s_r) / n is -σ(-(s_c - s_r)) / n; the rejected gradient is its negative
    want = torch.tensor([-1 / (1 + math.exp(d)) / 3 for d in deltas])
    assert torch.allclose(chosen.grad, want, atol=1e-6)
    assert torch.allclose(rejected.grad, -want, atol=1e-6)
    # a correctly ordered pair with a large margin costs almost nothing; a reversed one costs about the margin
    assert bradley_terry_loss(torch.tensor([10.0]), torch.tensor([0.0])).item() < 1e-4
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([10.0])).item() == pytest.approx(10.0, abs=1e-3)


# ------------------------------------------------------------------------------------------- cache
class CountingBranch(sb.Branch):
    name = "counting"
    feature_names = ("length",)

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def compute(self, items):
        self.seen.extend(items)
        return [sb.BranchOutput((float(len(r)),), f"len {len(r)}") for _, r in items]


def test_cache_hits_skip_the_branch_and_persist_on_disk(tmp_path: Path) -> None:
    items = [("p1", "short"), ("p2", "a longer answer"), ("p1", "short")]
    branch = CountingBranch()
    cache = sb.BranchCache(tmp_path / "c.sqlite")
    first = sb.run_branches([branch], items, cache)["counting"]
    assert branch.seen == [("p1", "short"), ("p2", "a longer answer")]  # the duplicate is computed once
    assert [o.features for o in first] == [(5.0,), (15.0,), (5.0,)]
    again = sb.run_branches([branch], items + [("p3", "new")], cache)["counting"]
    assert branch.seen[2:] == [("p3", "new")]  # only the miss ran
    assert again[:3] == first
    cache.close()
    fresh_branch = CountingBranch()
    reopened = sb.BranchCache(tmp_path / "c.sqlite")
    assert sb.run_branches([fresh_branch], items, reopened)["counting"] == first
    assert fresh_branch.seen == []  # read back from disk, nothing recomputed
    reopened.close()


def test_parallel_and_serial_branch_runs_agree(tmp_path: Path) -> None:
    items = [(CAPITAL_Q, "Canberra."), ("How do I boil an egg?", "BOIL IT!!! BOIL IT!!!")]
    branches = [sb.StyleBranch(), CountingBranch()]
    par = sb.run_branches(branches, items, None, parallel=True)
    ser = sb.run_branches(branches, items, None, parallel=False)
    assert par == ser and set(par) == {"style", "counting"}


# ------------------------------------------------------------------------------------------- branches
def test_style_branch_on_constructed_inputs() -> None:
    style = sb.StyleBranch()
    names = style.feature_names
    plain, caps, loop, one_word_ok, one_word_bad, listed = style.compute([
        (CAPITAL_Q, "The capital of Australia is Canberra."),
        (CAPITAL_Q, "THE CAPITAL OF AUSTRALIA IS CANBERRA!!!"),
        (CAPITAL_Q, "It is Canberra. It is Canberra. It is Canberra."),
        (CAPITAL_Q + " Answer in one word.", "Canberra."),
        (CAPITAL_Q + " Answer in one word.", "Great question! The capital of Australia is Canberra. I hope this helps!"),
        ("How do I boil an egg? Give the answer as a short bulleted list.", "- Boil water.\n- Cook nine minutes."),
    ])
    f = lambda out, key: out.features[names.index(key)]  # noqa: E731
    assert f(caps, "upper_fraction") > 0.9 > 0.2 > f(plain, "upper_fraction")
    assert f(caps, "exclamations") > 0 == f(plain, "exclamations")
    assert f(loop, "repeated_sentences") > 0.5 and f(plain, "repeated_sentences") == 0
    assert f(loop, "distinct_bigrams") < f(plain, "distinct_bigrams")
    assert f(one_word_ok, "format_match") == 1.0 and f(one_word_bad, "format_match") == -1.0
    assert f(one_word_bad, "filler") >= 2 and f(plain, "filler") == 0
    assert f(listed, "format_match") == 1.0 and f(plain, "format_match") == 0.0
    assert "shouting" in caps.text and "not followed" in one_word_bad.text


def test_states_matches_whole_words_only() -> None:
    assert sb.states("Canberra is the capital.", "canberra")
    assert sb.states("It was written by F. Scott Fitzgerald.", "F. Scott Fitzgerald")
    assert not sb.states("Percy Shelley wrote it.", "Mary Shelley")
    assert not sb.states("The symbol is Ox.", "O")


def _facts_file(tmp_path: Path) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text(
        json.dumps({"prompt": "The capital of Australia is", "target": "Canberra"}) + "\n"
        + json.dumps({"prompt": "The Mona Lisa was painted by", "target": "Leonardo da Vinci"}) + "\n"
    )
    return path


def test_fact_check_branch_with_a_facts_file(tmp_path: Path) -> None:
    branch = sb.FactCheckBranch(sb.FactCheckConfig(facts=[str(_facts_file(tmp_path))], fact_threshold=0.5))
    ok, wrong, unrelated = branch.compute([
        (CAPITAL_Q, "The capital of Australia is Canberra."),
        (CAPITAL_Q, "The capital of Australia is Sydney."),
        ("How do I boil an egg?", "Boil it for nine minutes."),
    ])
    assert ok.features[1:] == (1.0, 0.0) and ok.features[0] >= 0.5
    assert wrong.features[1:] == (0.0, 1.0) and "does not state 'Canberra'" in wrong.text
    assert unrelated.features == (0.0, 0.0, 0.0) and "no known fact" in unrelated.text


def test_fact_check_branch_reads_the_active_edits_of_an_edit_store(tmp_path: Path) -> None:
    from lifelong.editing.store import EditStore

    store_dir = tmp_path / "store"
    with EditStore.open(store_dir) as store:
        rec = store.add_edit("The capital of Australia is", "Canberra", editor="test")
    items = [(CAPITAL_Q, "It is Canberra."), (CAPITAL_Q, "It is Sydney.")]
    before = sb.FactCheckBranch(sb.FactCheckConfig(store=str(store_dir), fact_threshold=0.5))
    passed, failed = before.compute(items)
    assert passed.features[1] == 1.0 and failed.features[2] == 1.0
    with EditStore.open(store_dir) as store:
        store.rollback([rec.id])
    after = sb.FactCheckBranch(sb.FactCheckConfig(store=str(store_dir), fact_threshold=0.5))
    assert after.compute(items)[1].features == (0.0, 0.0, 0.0)  # a rolled-back edit is no longer a fact
    assert after.fingerprint() != before.fingerprint()  # so cached outputs made with the edit are not reused


def test_semantic_branch_ranks_on_topic_above_off_topic() -> None:
    on, off = sb.SemanticBranch().compute([
        (CAPITAL_Q, "The capital of Australia is Canberra."),
        (CAPITAL_Q, "Place the egg in boiling water for nine minutes."),
    ])
    assert on.features[0] > off.features[0] + 0.3
    assert "on-topic" in on.text and "off-topic" in off.text


@pytest.mark.slow
def test_llm_branches_fluency_and_quality() -> None:
    """The one test that loads the local language model (a few seconds from its safetensors cache)."""
    items = [(CAPITAL_Q, "The capital of Australia is Canberra."),
             (CAPITAL_Q, "Australia the is Canberra of capital city.")]
    fluent, garbled = sb.FluencyBranch().compute(items)
    assert fluent.features[0] > garbled.features[0] + 1.0
    assert fluent.text.startswith("fluency:")
    (judged,) = sb.QualityBranch(sb.QualityConfig(max_new_tokens=3)).compute(items[:1])
    assert judged.text.startswith("quality judge: ") and len(judged.text) > len("quality judge: ")
    assert math.isfinite(judged.features[0])


# ------------------------------------------------------------------------------------------- the model
def test_contributions_are_the_standardised_branch_terms_and_save_load_round_trip(tmp_path: Path) -> None:
    pairs = bundled_preferences("train")[:24]
    rm = create("scorer", "srm", branches=["semantic", "style", "fact-check"], facts=[str(_facts_file(tmp_path))],
                epochs=5, cache_dir=str(tmp_path))
    summary = rm.fit(pairs)
    train_items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    scored = rm.score_many(train_items)
    # the training accuracy is the share of pairs whose chosen response scores strictly higher, recounted here
    wins = sum(scored[i].reward > scored[i + 24].reward for i in range(24))
    assert summary["n_pairs"] == 24 and summary["train_accuracy"] == pytest.approx(wins / 24)
    # each branch's contribution, worked out with numpy from the branch features and the head's weights: the
    # features standardised by their training mean and (population) std, times the branch's weights, minus that
    # term's mean over the training responses
    train_feats = rm.featurize(train_items).feats
    results = rm.score_many([(p.prompt, p.chosen) for p in pairs[:5]])
    feats = rm.featurize([(p.prompt, p.chosen) for p in pairs[:5]]).feats
    for name in ("semantic", "style", "fact-check"):
        x_train = train_feats[name].cpu().numpy().astype(np.float64)
        mean, std = x_train.mean(0), np.maximum(x_train.std(0), 1e-3)
        w = rm.head.branches[name].weight.detach().cpu().numpy().astype(np.float64)[0]
        offset = (((x_train - mean) / std) @ w).mean()
        by_hand = ((feats[name].cpu().numpy() - mean) / std) @ w - offset
        assert [r.contributions[name] for r in results] == pytest.approx(list(by_hand), abs=1e-4)
    # every term reads "above or below an average training response": its mean over the training responses is 0
    for term in ("text", "semantic", "style", "fact-check"):
        assert float(np.mean([r.contributions[term] for r in scored])) == pytest.approx(0.0, abs=1e-4)
    for r in results:
        assert set(r.branch_texts) == {"semantic", "style", "fact-check"}
    rm.save(tmp_path / "model")
    assert isinstance(rm, Scorer) and isinstance(results[0], ScoreResult)  # the contract, structurally
    again = load_scorer(tmp_path / "model")
    assert type(get("scorer", "srm").factory.load(tmp_path / "model")) is type(again)  # the registry's loader
    assert [x.reward for x in again.score_many([(p.prompt, p.chosen) for p in pairs[:5]])] == pytest.approx(
        [r.reward for r in results], abs=1e-5)
    report = again.evaluate(bundled_preferences("heldout")[:16])
    assert report["n_pairs"] == 16 and set(report["per_dimension"]) <= {"factual", "relevance", "fluency", "style"}
    assert sum(d["n_pairs"] for d in report["per_dimension"].values()) == 16


def test_scalar_rm_reads_the_prompt_and_response_only(tmp_path: Path) -> None:
    from lifelong.adapters.lm.model_pool import encode

    rm = create("scorer", "scalar-rm", epochs=3, cache_dir=str(tmp_path))
    pairs = bundled_preferences("train")[:20]
    rm.fit(pairs)
    r = rm.score(pairs[0].prompt, pairs[0].chosen)
    assert list(r.contributions) == ["text"]
    # the reward is the head's MLP over the encoder's embedding of "Prompt: ...\nResponse: ..." (encoded here,
    # outside the model), less that MLP's mean over the training responses
    joined = [f"Prompt: {p.prompt}\nResponse: {resp}" for p in pairs for resp in (p.chosen,)] + \
             [f"Prompt: {p.prompt}\nResponse: {p.rejected}" for p in pairs]
    with torch.no_grad():
        mlp = rm.head.text(torch.tensor(np.asarray(encode(joined, rm.config.encoder), dtype=np.float32)))[:, 0]
    assert r.reward == pytest.approx(float(mlp[0] - mlp.mean()), abs=1e-4)
    with pytest.raises(UserError, match="unknown config key 'branches'"):
        create("scorer", "scalar-rm", branches=["style"])


def test_join_texts_puts_the_branch_texts_into_the_encoder_input(tmp_path: Path, monkeypatch) -> None:
    import lifelong.scorers.reward_model as rmod

    seen: list[str] = []

    def recording_encode(texts, model_name, device=None):  # a stand-in encoder: one number per text's length
        seen.extend(texts)
        return np.asarray([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(rmod, "encode", recording_encode)
    item = ("How do I boil an egg?", "Put it in boiling water for nine minutes.")
    for join in (True, False):
        seen.clear()
        rm = create("scorer", "srm", branches=["style"], join_texts=join, cache_dir=":memory:")
        f = rm.featurize([item])
        style_text = f.texts["style"][0]
        assert style_text  # the style branch writes a text
        plain = f"Prompt: {item[0]}\nResponse: {item[1]}"
        assert seen == ([f"{plain}\n{style_text}"] if join else [plain])
        assert float(f.emb[0, 0]) == len(seen[0])


def test_branch_features_false_keeps_the_texts_and_drops_the_feature_terms(tmp_path: Path, monkeypatch) -> None:
    import lifelong.scorers.reward_model as rmod

    def length_encode(texts, model_name, device=None):  # a stand-in encoder: one number per text's length
        return np.asarray([[float(len(t)) / 100, 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(rmod, "encode", length_encode)
    pairs = bundled_preferences("train")[:12]
    rm = create("scorer", "srm", branches=["style"], branch_features=False, epochs=3, cache_dir=":memory:")
    rm.fit(pairs)
    assert len(rm.head.branches) == 0  # no linear term over the style branch's features
    item = (pairs[0].prompt, pairs[0].chosen)
    r = rm.score(*item)
    assert list(r.contributions) == ["text"] and r.branch_texts["style"]
    # the reward is the text MLP over the encoding of prompt, response and the style branch's text (worked out
    # here from the stand-in encoder), less that MLP's mean over the training responses
    def joined(p, resp):
        return f"Prompt: {p}\nResponse: {resp}\n{rm.featurize([(p, resp)]).texts['style'][0]}"

    train = [joined(p.prompt, p.chosen) for p in pairs] + [joined(p.prompt, p.rejected) for p in pairs]
    with torch.no_grad():
        mlp = rm.head.text(torch.tensor(length_encode(train + [joined(*item)], "")))[:, 0]
    assert r.reward == pytest.approx(float(mlp[-1] - mlp[:-1].mean()), abs=1e-4)
    rm.save(tmp_path / "m")
    assert load_scorer(tmp_path / "m").score(*item).reward == pytest.approx(r.reward, abs=1e-5)
    with pytest.raises(UserError, match="join_texts=false and branch_features=false"):
        create("scorer", "srm", branches=["style"], branch_features=False, join_texts=False)


def test_srm_config_errors_name_the_field() -> None:
    with pytest.raises(UserError, match="unknown branch 'nope'; allowed values: semantic"):
        create("scorer", "srm", branches=["nope"])
    with pytest.raises(UserError, match="facts: file /no/such.jsonl not found"):
        create("scorer", "srm", facts=["/no/such.jsonl"])
    with pytest.raises(UserError, match="hidden"):
        create("scorer", "srm", hidden=0)


def _model_with_a_head() -> RewardModel:
    """A scalar-rm with a fresh (untrained) head: enough to save and load without running the encoder."""
    rm = create("scorer", "scalar-rm", cache_dir=":memory:", device="cpu", hidden=4)
    rm.head = RewardHead(8, {}, 4, 0.0)
    return rm


def test_save_is_atomic_and_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    rm = _model_with_a_head()
    out = tmp_path / "model"

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(safetensors.torch, "save_file", disk_full)
        with pytest.raises(OSError, match="disk full"):
            rm.save(out)
    assert list(tmp_path.iterdir()) == []  # no model folder and no temporary one

    synced: list[int] = []
    real_fsync = os.fsync
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
        rm.save(out)
    assert len(synced) >= 3  # both files and the folders they were renamed in
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "head.safetensors"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with monkeypatch.context() as mp:  # into an existing folder: a failed save leaves the previous model whole
        mp.setattr(safetensors.torch, "save_file", disk_full)
        with pytest.raises(OSError, match="disk full"):
            rm.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    again = srm.ScalarRewardModel.load(out)
    assert again.scorer == "scalar-rm" and again.head is not None
    assert all(torch.equal(v, again.head.state_dict()[k]) for k, v in rm.head.state_dict().items())
    with pytest.raises(UserError, match="a saved 'scalar-rm' scorer, not a StructuralRewardModel"):
        srm.StructuralRewardModel.load(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        rm.save(tmp_path / "file")


def test_branch_names_are_defined_once_and_built_from_settings() -> None:
    assert sb.BRANCH_NAMES == tuple(t.name for t in sb.BRANCH_TYPES)
    assert sb.BRANCH_NAMES == ("semantic", "fact-check", "style", "fluency", "quality")
    assert sb.branch_names()[:5] == sb.BRANCH_NAMES  # built-ins first, then other registered branches
    built = sb.make_branches(["style", "quality", "fact-check"], llm="some-lm", batch_size=3, facts=["bundled"],
                             fact_threshold=0.7, branch_config={"quality": {"max_new_tokens": 2}})
    assert [b.name for b in built] == ["style", "quality", "fact-check"]
    assert (built[1].llm, built[1].batch_size, built[1].max_new_tokens) == ("some-lm", 3, 2)
    assert built[2].fact_files == [str(BUNDLED_FACTS)] and built[2].threshold == 0.7  # nothing loaded yet
    with pytest.raises(UserError, match="unknown branch 'smell'; allowed values: semantic, fact-check"):
        sb.make_branches(["smell"])


# ------------------------------------------------------------------------------------------- data
def test_bundled_set_split_sizes_labels_and_no_leakage() -> None:
    train, held = bundled_preferences("train"), bundled_preferences("heldout")
    assert len(train) + len(held) == len(bundled_preferences("all")) >= 400
    assert len(held) >= 100
    dims = {"factual", "relevance", "fluency", "style"}
    assert {p.dimension for p in train} == dims == {p.dimension for p in held}
    # the factual prompts of the held-out split never appear in training (split per fact / question)
    held_q = {p.prompt for p in held if p.dimension == "factual"}
    assert not held_q & {p.prompt for p in train}
    facts = load_facts(BUNDLED_FACTS)
    assert len(facts) >= 100 and all(f.target for f in facts)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        bundled_preferences("dev")


def test_loaders_read_plain_hh_rlhf_and_ultrafeedback(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "dimension": "style"},
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
        {"prompt": "Name a colour.",
         "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}],
         "score_chosen": 9.0, "score_rejected": 2.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plain, hh, uf = load_preferences(path)
    assert plain == PreferencePair("Hi?", "Hello!", "Go away.", "style")
    assert hh.prompt == "Human: What is 2+2?\n\nAssistant:" and (hh.chosen, hh.rejected) == ("4.", "5.")
    assert (uf.prompt, uf.chosen, uf.rejected, uf.dimension) == ("Name a colour.", "Blue.", "Seven.", None)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "c"}', r"bad.jsonl:2: missing field 'rejected'"),
    ('{"prompt": "p", "chosen": "c", "rejected": 3}', r"bad.jsonl:2: field 'rejected' must be a string"),
    ('{"prompt": "p", "chosen": "c", "rejected": ', r"bad.jsonl:2: invalid JSON"),
    ('{"chosen": "c", "rejected": "r"}', r"bad.jsonl:2: missing field 'prompt'"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r", "dimension": 5}', r"bad.jsonl:2: field 'dimension'"),
])
def test_loader_errors_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        load_preferences(path)
