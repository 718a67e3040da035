"""L2P through Avalanche's LearningToPrompt: offline tiny ViT, label-only streams, local timm weights."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.errors import UserError
from lifelong.strategies.l2p import L2P, L2PConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # ViT steps: one thread avoids oversubscription


def _l2p(stream, **cfg) -> L2P:
    config = build_config(L2PConfig, {"epochs": 1, "batch_size": 64, **cfg})
    return L2P(config, RunContext(stream=stream, device=torch.device("cpu"), seed=0))


def test_l2p_trains_prompts_and_head_on_a_label_only_stream(stream):
    sample = stream.train_stream[0].dataset[0]
    assert len(sample) == 2  # (x, y): no task label for Avalanche's forward to read
    learner = _l2p(stream)
    vit = learner.model.vit
    frozen = {k: v.clone() for k, v in vit.state_dict().items() if k.startswith(("blocks", "patch_embed", "norm"))}
    prompts = vit.prompt.prompt.detach().clone()
    learner.train_experience(stream.train_stream[0])
    learner.train_experience(stream.train_stream[1])
    state = vit.state_dict()
    assert all(torch.equal(frozen[k], state[k]) for k in frozen)
    assert not torch.equal(vit.prompt.prompt, prompts)  # the prompt pool learned
    x, _ = next(iter(torch.utils.data.DataLoader(stream.test_stream[0].dataset, batch_size=16)))
    logits = learner.predict(x)
    seen = stream.classes_per_experience[0] + stream.classes_per_experience[1]
    assert logits.shape == (16, stream.n_classes)
    assert set(logits.argmax(1).tolist()) <= set(seen)
    restored = _l2p(stream)
    restored.load_state_dict(learner.state_dict())
    assert torch.equal(restored.predict(x), logits)


def test_l2p_loads_local_timm_vit_weights(tmp_path, stream):
    source = _l2p(stream)
    # a timm-format ViT checkpoint: the query ViT's weights (no prompt pool, 1 + patches positions)
    weights = {k: v.clone() for k, v in source.model.query.state_dict().items()}
    torch.manual_seed(5)
    weights = {k: v + 0.01 * torch.randn_like(v) for k, v in weights.items()}
    path = tmp_path / "vit.pt"
    torch.save(weights, path)
    learner = _l2p(stream, pretrained=str(path))
    for k in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(learner.model.vit.state_dict()[k], weights[k])
        assert torch.equal(learner.model.query.state_dict()[k], weights[k])
    pos = learner.model.vit.pos_embed
    n_prompt = 4 * 3
    assert torch.equal(pos[:, 0], weights["pos_embed"][:, 0])
    assert torch.equal(pos[:, 1 + n_prompt:], weights["pos_embed"][:, 1:])
    with pytest.raises(UserError, match="does not exist"):
        _l2p(stream, pretrained=str(tmp_path / "none.pt"))


def test_l2p_config_errors():
    with pytest.raises(ConfigError, match="top_k"):
        build_config(L2PConfig, {"top_k": 30, "pool_size": 10})
    with pytest.raises(ConfigError, match="model"):
        build_config(L2PConfig, {"model": "resnet50"})


def test_l2p_runs_through_the_cli(tmp_path):
    from lifelong.cli.main import main

    out = tmp_path / "l2p"
    rc = main(["run", "--strategy", "l2p", "--benchmark", "split-digits", "--out", str(out), "--json",
               "--set", "n_experiences=2", "--set", "epochs=1", "--set", "task_labels=false"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == "l2p" and len(results["accuracy_matrix"]) == 2
