"""SimE (adapters on the first task, prototypes for every task) and the Continual-CLIP baseline."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.errors import UserError
from lifelong.strategies.continual_clip import ContinualClip, ContinualClipConfig
from lifelong.strategies.sime import SimE, SimEConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # ViT steps: one thread avoids oversubscription


def _ctx(stream) -> RunContext:
    return RunContext(stream=stream, device=torch.device("cpu"), seed=0)


def _sime(stream, **cfg) -> SimE:
    return SimE(build_config(SimEConfig, {"epochs": 1, "batch_size": 64, "adapter_dim": 8, **cfg}), _ctx(stream))


def _batch(stream, j: int, n: int = 60):
    return next(iter(torch.utils.data.DataLoader(stream.test_stream[j].dataset, batch_size=n)))[:2]


def test_sime_trains_adapters_on_the_first_task_only(stream):
    learner = _sime(stream, adapter_blocks=[0, -1], adapter_sites=["mlp", "attn"])
    assert len(learner.model.adapters) == 4
    frozen = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    init = {k: v.clone() for k, v in learner.model.adapters.state_dict().items()}
    learner.train_experience(stream.train_stream[0])
    after_first = {k: v.clone() for k, v in learner.model.adapters.state_dict().items()}
    assert any(not torch.equal(init[k], after_first[k]) for k in init)  # adapters learned on task 0
    learner.train_experience(stream.train_stream[1])
    assert all(torch.equal(after_first[k], v) for k, v in learner.model.adapters.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in learner.backbone.state_dict().items())
    c01 = stream.classes_per_experience[0] + stream.classes_per_experience[1]
    assert learner.seen.nonzero().flatten().tolist() == c01
    protos = learner.model.prototypes
    assert torch.allclose(protos[c01].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert protos[c01[-1] + 1:].abs().sum() == 0  # no prototypes for classes not seen yet
    assert learner.summary()["trainable_parameters"] == 4 * (64 * 8 * 2 + 8 + 64)

    # faiss search equals brute-force cosine similarity to the prototypes
    x, y = _batch(stream, 1)
    logits = learner.predict(x)
    f = F.normalize(learner.features(x), dim=-1)
    brute = f @ protos[c01].T
    assert torch.allclose(logits[:, c01], brute, atol=1e-5)
    assert (logits[:, c01[-1] + 1:] < -1e3).all()
    assert (logits.argmax(1) == y).float().mean() > 0.4  # well above chance (1/4)

    # resume: the restored learner predicts exactly the same
    restored = _sime(stream, adapter_blocks=[0, -1], adapter_sites=["mlp", "attn"])
    restored.load_state_dict(learner.state_dict())
    assert torch.equal(restored.predict(x), logits)


def test_sime_train_tasks_zero_keeps_the_frozen_encoder(stream):
    learner = _sime(stream, train_tasks=0)
    learner.train_experience(stream.train_stream[0])
    x, _ = _batch(stream, 0, 8)
    with torch.no_grad():
        plain = learner.loaded.text.clip.encode_image(learner.fit(x))
        assert torch.equal(learner.features(x), plain)  # zero-initialised adapters never trained


def test_sime_fuses_the_zero_shot_text_score(stream):
    w = 0.25
    learner = _sime(stream, text_weight=w, train_tasks=0)
    learner.train_experience(stream.train_stream[0])
    x, _ = _batch(stream, 0, 8)
    c0 = stream.classes_per_experience[0]
    text = learner.loaded.text.class_embeddings([stream.names_in_order()[c] for c in c0], ["a bad photo of a {}."])
    f = F.normalize(learner.features(x), dim=-1)
    expected = (1 - w) * (f @ learner.model.prototypes[c0].T) + w * (f @ text.T)
    assert torch.allclose(learner.predict(x)[:, c0], expected, atol=1e-5)


def test_sime_config_errors(stream):
    with pytest.raises(ConfigError, match="adapter_sites"):
        build_config(SimEConfig, {"adapter_sites": ["ffn"]})
    with pytest.raises(ConfigError, match="text_weight"):
        build_config(SimEConfig, {"text_weight": 2.0})
    with pytest.raises(ConfigError, match="adapter_blocks: block 9"):
        _sime(stream, adapter_blocks=[9])
    with pytest.raises(UserError, match="text tower"):
        SimE(build_config(SimEConfig, {"model": "timm:vit_tiny_patch16_224", "text_weight": 0.5}), _ctx(stream))


def test_continual_clip_grows_its_text_classifier(stream):
    learner = ContinualClip(build_config(ContinualClipConfig, {}), _ctx(stream))
    x, _ = _batch(stream, 0, 8)
    learner.train_experience(stream.train_stream[0])
    c0 = stream.classes_per_experience[0]
    logits = learner.predict(x)
    assert set(logits.argmax(1).tolist()) <= set(c0)
    learner.train_experience(stream.train_stream[1])
    c1 = stream.classes_per_experience[1]
    logits2 = learner.predict(x)
    assert torch.allclose(logits2[:, c0], logits[:, c0])  # old classes' scores unchanged: nothing trained
    assert (logits2[:, c1] > -1e3).all() and (logits2[:, c1[-1] + 1:] < -1e3).all()


@pytest.mark.parametrize("strategy", ["sime", "continual-clip"])
def test_runs_through_the_cli(tmp_path, strategy):
    from lifelong.cli.main import main

    out = tmp_path / strategy
    rc = main(["run", "--strategy", strategy, "--benchmark", "split-digits", "--out", str(out), "--json",
               "--set", "n_experiences=2", "--set", "epochs=1"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == strategy and len(results["accuracy_matrix"]) == 2
    if strategy == "sime":
        assert results["accuracy_matrix"][0][0] > 0.5
        assert results["strategy_summary"]["trainable_parameters"] == 4 * (64 * 64 * 2 + 64 + 64)


def test_shipped_configs_are_valid():
    """Every configs/{sime,prop,l2p}/*.yaml builds its strategy config and names real benchmark keys; the offline
    ones resolve as whole runs (the data-set ones need their data, which the benchmark checks at build time)."""
    from pathlib import Path

    from lifelong.incremental.run import resolve_config
    from lifelong.platform import registry
    from lifelong.platform.config import field_names, load_yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(p for d in ("sime", "prop", "l2p") for p in (root / d).glob("*.yaml"))
    assert len(files) >= 5
    known = {s.name for s in registry.list_plugins("benchmark")}
    for path in files:
        data = load_yaml(path)
        spec = registry.get("strategy", data["strategy"])
        build_config(spec.config, data["strategy_config"])
        assert data["benchmark"] in known, f"{path.name}: unknown benchmark {data['benchmark']}"
        bench_fields = field_names(registry.get("benchmark", data["benchmark"]).config)
        assert set(data["benchmark_config"]) <= set(bench_fields), path.name
        if data["benchmark"] == "split-digits":
            resolve_config(config_file=path)
