"""Few-shot episodes, the FSL-SNN modules and loss on values worked out by hand, `lifelong fewshot` end to end,
and a few-shot class-incremental stream through `run`."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.cli.main import main
from lifelong.incremental.episodes import EpisodeSampler, mean_ci95, split_classes, split_counts
from lifelong.incremental.run import build_stream, resolve_config, run_experiment
from lifelong.platform.config import ConfigError
from lifelong.strategies.fsl_snn import CrossFeature, FSLSNNConfig, FSLSNNNet, SelfFeature, info_nce


def _pool(n_classes=8, per_class=10):
    """Sample i of the pool is the scalar image i, so an episode's samples say which pool items they are."""
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.arange(len(y), dtype=torch.float32).reshape(-1, 1, 1, 1)
    return x, y


# ------------------------------------------------------------------------------------------------ episodes
def test_class_splits_are_disjoint_cover_the_counts_and_follow_the_seed():
    classes = list(range(40))
    counts = split_counts(40, 5)
    assert counts == (24, 8, 8)
    split = split_classes(classes, counts, seed=3)
    sets = [set(split[s]) for s in ("train", "val", "test")]
    assert [len(s) for s in sets] == [24, 8, 8]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert split == split_classes(classes, counts, seed=3)
    assert split != split_classes(classes, counts, seed=4)


def test_split_counts_of_a_ten_class_set_and_refusals():
    assert split_counts(10, 5) == (5, 0, 5)  # too few classes for a validation split of 5 ways
    assert split_counts(10, 3) == (4, 3, 3)
    with pytest.raises(ConfigError, match="test_classes"):
        split_counts(10, 5, test=4)
    with pytest.raises(ConfigError, match="exceeds"):
        split_counts(10, 2, train=6, val=3, test=3)
    with pytest.raises(ConfigError, match="train_classes"):
        split_counts(10, 6)


def test_episodes_are_balanced_disjoint_within_and_deterministic():
    x, y = _pool()
    sampler = EpisodeSampler(x, y, [0, 2, 3, 5, 7], n_way=3, k_shot=2, n_query=4, seed=1)
    for i in range(20):
        ep = sampler.episode(i)
        assert len(set(ep.classes)) == 3 and set(ep.classes) <= {0, 2, 3, 5, 7}
        assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2]
        assert ep.query_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        support, query = ep.support_x.flatten().long(), ep.query_x.flatten().long()
        assert not set(support.tolist()) & set(query.tolist())  # no sample is both support and query
        for label, c in enumerate(ep.classes):  # every sample belongs to the class its label names
            assert (y[support[ep.support_y == label]] == c).all() and (y[query[ep.query_y == label]] == c).all()
    again = EpisodeSampler(x, y, [0, 2, 3, 5, 7], n_way=3, k_shot=2, n_query=4, seed=1)
    assert torch.equal(again.episode(7).query_x, sampler.episode(7).query_x)  # episode i depends on (seed, i) only
    other = EpisodeSampler(x, y, [0, 2, 3, 5, 7], n_way=3, k_shot=2, n_query=4, seed=2)
    assert not all(torch.equal(other.episode(i).support_x, sampler.episode(i).support_x) for i in range(5))


@settings(max_examples=40, deadline=None)
@given(n_way=st.integers(2, 6), k_shot=st.integers(1, 4), n_query=st.integers(1, 5), seed=st.integers(0, 2**31),
       i=st.integers(0, 10**6))
def test_every_episode_is_balanced_and_its_samples_distinct(n_way, k_shot, n_query, seed, i):
    x, y = _pool(n_classes=6, per_class=9)
    ep = EpisodeSampler(x, y, range(6), n_way=n_way, k_shot=k_shot, n_query=n_query, seed=seed).episode(i)
    assert torch.bincount(ep.support_y, minlength=n_way).tolist() == [k_shot] * n_way
    assert torch.bincount(ep.query_y, minlength=n_way).tolist() == [n_query] * n_way
    items = torch.cat([ep.support_x, ep.query_x]).flatten().long().tolist()
    assert len(set(items)) == len(items) and len(set(ep.classes)) == n_way
    assert [int(y[j]) for j in ep.support_x.flatten().long()] == [ep.classes[c] for c in ep.support_y]


def test_sampler_refuses_classes_with_too_few_samples():
    x, y = _pool(per_class=4)
    with pytest.raises(ConfigError, match="fewer than k_shot \\+ n_query = 5"):
        EpisodeSampler(x, y, [0, 1, 2], n_way=2, k_shot=1, n_query=4, seed=0)


def test_mean_and_95_percent_interval_by_hand():
    mean, half = mean_ci95([0.0, 1.0])
    assert mean == 0.5 and half == pytest.approx(1.96 * math.sqrt(0.5) / math.sqrt(2))
    assert mean_ci95([0.25]) == (0.25, 0.0)


# -------------------------------------------------------------------------------- modules and InfoNCE
def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cosine similarities 1 and 0: -log(e / (e + 1)) for each query (the second is the first mirrored)
    expected = math.log(1 + math.exp(-1))
    assert float(info_nce(q, p, torch.tensor([0, 1]), 1.0)) == pytest.approx(expected, rel=1e-6)
    # temperature 0.5 doubles the similarities; the wrong class swaps the roles
    assert float(info_nce(q, p, torch.tensor([0, 1]), 0.5)) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert float(info_nce(q[:1], p, torch.tensor([1]), 1.0)) == pytest.approx(math.log(1 + math.exp(1)), rel=1e-6)


def _identity_attention(module, channels):
    """Queries and keys of zero (uniform attention), values the identity, the gate open."""
    with torch.no_grad():
        module.query.weight.zero_()
        module.key.weight.zero_()
        module.value.weight.copy_(torch.eye(channels))
        module.gate.fill_(1.0)


def test_self_feature_module_shape_and_values_by_hand():
    sfe = SelfFeature(channels=2, dim=3)
    _identity_attention(sfe, 2)
    # T=1, B=1, C=2, H=1, W=2: tokens a = (1, 0) and b = (0, 1); uniform attention adds their mean (0.5, 0.5)
    fmap = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 1, 2)
    out = sfe(fmap)
    assert out.shape == (1, 1, 2, 2)  # [T, B, H*W, C]
    assert torch.allclose(out[0, 0], torch.tensor([[1.5, 0.5], [0.5, 1.5]]))
    sfe.gate.data.zero_()  # a closed gate is the identity: the module starts as the plain backbone
    assert torch.allclose(sfe(fmap)[0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_cross_feature_module_shape_values_and_mask_by_hand():
    cfm = CrossFeature(channels=2, dim=3)
    _identity_attention(cfm, 2)
    query = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)  # T=1, Q=1, L=1 token
    # class 0 has one real token (0, 1) and one padding token that the mask hides; class 1 has (1, 1) and (3, 1)
    support = torch.tensor([[[0.0, 1.0], [9.0, 9.0]], [[1.0, 1.0], [3.0, 1.0]]]).reshape(1, 2, 2, 2)
    mask = torch.tensor([[True, False], [True, True]])
    out = cfm(query, support, mask)
    assert out.shape == (1, 1, 2, 2)  # [T, Q, N, C]
    # query + mean of the class's real tokens: (1,0) + (0,1) and (1,0) + (2,1)
    assert torch.allclose(out[0, 0], torch.tensor([[1.0, 1.0], [3.0, 1.0]]))


def test_episode_forward_shapes_and_the_ablated_network():
    config = FSLSNNConfig(T=2)
    net = FSLSNNNet(1, "tiny", 0.5, config)
    sx, sy, qx = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.rand(4, 1, 8, 8)
    out = net.forward_episode(sx, sy, qx, 3)
    assert out["step_logits"].shape == (2, 4, 3) and out["prototypes"].shape[:2] == (2, 3)
    proto = FSLSNNNet(1, "tiny", 0.5, FSLSNNConfig(T=2, self_module=False, cross_module=False))
    assert proto.self_feature is None and proto.cross_feature is None
    assert proto.forward_episode(sx, sy, qx, 3)["step_logits"].shape == (2, 4, 3)
    ann = FSLSNNNet(1, "tiny", 0.5, FSLSNNConfig(spiking=False))
    assert ann.forward_episode(sx, sy, qx, 3)["step_logits"].shape == (1, 4, 3)  # one time step


# ---------------------------------------------------------------------------------------- the commands
TINY_FEWSHOT = ["--set", "train_episodes=3", "--set", "val_every=3", "--set", "val_episodes=2", "--set", "test_episodes=4", "--set", "n_query=2",
                "--set", "n_way=3", "--set", "T=1", "--set", "train_per_class=12"]


def test_lifelong_fewshot_end_to_end(tmp_path, capsys):
    out = tmp_path / "fs"
    assert main(["fewshot", "--seed", "1", "--out", str(out), *TINY_FEWSHOT]) == 0
    printed = capsys.readouterr().out
    assert "3-way 1-shot" in printed and "over 4 test episodes" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 1 and results["test"]["episodes"] == 4 and len(results["test"]["per_episode"]) == 4
    assert results["config"]["method_config"]["T"] == 1 and results["config"]["n_way"] == 3
    assert "torch" in results["versions"] and results["cost_per_episode"]["sops"] >= 0
    split = results["classes"]
    assert split["val"] and not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert [p["episode"] for p in results["validation"]] == [3]


@pytest.mark.parametrize("args, message", [
    (["--set", "n_way=1"], "n_way must be at least 2"),
    (["--set", "bogus=1"], "unknown config key 'bogus'"),
    (["--method", "naive"], "does not learn from episodes"),
    (["--set", "n_way=6"], "train_classes"),
])
def test_lifelong_fewshot_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["fewshot", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_fscil_stream_keeps_k_shots_after_the_base_stage_and_runs(tmp_path):
    overrides = {"initial_classes": 4, "n_experiences": 4, "shots": 3, "task_labels": False, "epochs": 1,
                 "train_per_class": 30, "episodes_per_epoch": 3, "T": 1, "n_query": 5}
    config = resolve_config(strategy="fsl-snn", benchmark="split-digits", overrides=overrides)
    stream = build_stream(config.benchmark, config.benchmark_config)
    sizes = [len(e.dataset) for e in stream.train_stream]
    assert sizes == [4 * 30, 2 * 3, 2 * 3, 2 * 3]
    assert [len(c) for c in stream.classes_per_experience] == [4, 2, 2, 2]
    results = run_experiment(config, out=tmp_path / "fscil", progress=False)
    assert np.asarray(results["accuracy_matrix"]).shape == (4, 4) and len(results["seen_accuracy"]) == 4
    assert results["strategy_summary"]["support_samples"] == 4 * 5 + 6 * 3  # five a base class, the 3 shots of each later one
    naive = resolve_config(strategy="naive", benchmark="split-digits",
                           overrides={k: v for k, v in overrides.items() if k in ("initial_classes", "n_experiences",
                                                                                  "shots", "task_labels", "epochs",
                                                                                  "train_per_class")})
    assert len(run_experiment(naive, out=tmp_path / "naive", progress=False)["seen_accuracy"]) == 4


def test_too_many_shots_are_refused_in_one_line(tmp_path, capsys):
    code = main(["run", "--strategy", "naive", "--set", "initial_classes=4", "--set", "n_experiences=4",
                 "--set", "shots=500", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "shots=500" in err and len(err.strip().splitlines()) == 1
