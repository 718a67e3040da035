"""ProP: task prompts, the regulariser, batched multi-prompt inference, the learner and its CLI run."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong.adapters.nets.clip import load_backbone
from lifelong.adapters.nets.prompts import PromptBank, forward_all_prompts, forward_each_prompt, prompt_regulariser
from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.strategies.prop import ProP, ProPConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # ViT steps: one thread avoids oversubscription


def _learner(stream, **cfg) -> ProP:
    config = build_config(ProPConfig, {"epochs": 1, "batch_size": 64, **cfg})
    return ProP(config, RunContext(stream=stream, device=torch.device("cpu"), seed=0))


@pytest.mark.parametrize("which", ["open_clip", "timm"])
def test_batched_multi_prompt_forward_equals_loop(which):
    if which == "open_clip":
        backbone = load_backbone("tiny").visual
    else:
        from timm.models.vision_transformer import VisionTransformer

        from lifelong.adapters.nets.clip import VisionBackbone

        backbone = VisionBackbone(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                    num_heads=2, num_classes=0).eval())
    torch.manual_seed(0)
    x = torch.randn(5, 3, 32, 32)
    prompts = torch.randn(3, 4, backbone.width)
    with torch.no_grad():
        loop = forward_each_prompt(backbone, x, prompts)
        batched = forward_all_prompts(backbone, x, prompts)
        chunked = forward_all_prompts(backbone, x, prompts, max_sequences=10)
    assert batched.shape == (3, 5, backbone.out_dim)
    assert torch.allclose(batched, loop, atol=1e-5)
    assert torch.allclose(chunked, loop, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different prompts, different features


def test_batched_forward_runs_the_blocks_once():
    backbone = load_backbone("tiny").visual
    calls = []
    handle = backbone.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        forward_all_prompts(backbone, torch.randn(4, 3, 32, 32), torch.randn(6, 2, backbone.width))
    handle.remove()
    assert calls == [24]  # one call with T*B sequences, not six calls with B
    calls.clear()
    handle = backbone.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        forward_all_prompts(backbone, torch.randn(5, 3, 32, 32), torch.randn(6, 2, backbone.width), max_sequences=12)
    handle.remove()
    assert calls == [12, 12, 6]  # capped: slices of 2, 2, 1 images, each forward carrying all six prompts


def test_regulariser_gradient_matches_its_formula():
    p = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 1.5, 3.0]], requires_grad=True)
    lam, b = 0.1, 1.0
    prompt_regulariser(p, "l2", lam, b).backward()
    assert torch.allclose(p.grad, 2 * lam * p.detach())
    p.grad = None
    loss = prompt_regulariser(p, "bound", lam, b)
    loss.backward()
    v = p.detach()
    expected = 2 * lam * torch.clamp(v.abs() - b, min=0) * torch.sign(v)
    assert torch.allclose(p.grad, expected)
    assert torch.allclose(loss, lam * torch.tensor((1.0 ** 2) + (0.5 ** 2) + (2.0 ** 2)))
    assert p.grad[0, 1] == 0 and p.grad[0, 3] == 0  # values inside the bound are free
    assert float(prompt_regulariser(p, "none", lam, b)) == 0.0
    with pytest.raises(ConfigError, match="allowed values: l2, bound, none"):
        prompt_regulariser(p, "l1")  # type: ignore[arg-type]


def test_prompt_bank_grows_and_warm_starts():
    bank = PromptBank(3, 8)
    g = torch.Generator().manual_seed(0)
    first = bank.add_task("uniform", 0.5, g)
    assert first.shape == (3, 8) and float(first.abs().max()) <= 0.5
    second = bank.add_task("previous")
    assert torch.equal(second.detach(), first.detach()) and second is not first
    assert bank.stacked().shape == (2, 3, 8)
    bank.resize(4)
    assert len(bank) == 4
    with pytest.raises(ConfigError):
        PromptBank(0, 8)


def test_prop_learns_one_prompt_per_task_on_a_frozen_backbone(stream):
    learner = _learner(stream)
    frozen = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    learner.train_experience(stream.train_stream[0])
    p0 = learner.bank.prompts[0].detach().clone()
    learner.train_experience(stream.train_stream[1])
    assert len(learner.bank) == 2
    assert torch.equal(learner.bank.prompts[0], p0)  # task 0's prompt untouched by task 1
    assert all(torch.equal(frozen[k], v) for k, v in learner.backbone.state_dict().items())
    c0, c1 = stream.classes_per_experience[0], stream.classes_per_experience[1]
    assert learner.model.task_of_class[c0].tolist() == [0, 0]
    assert learner.model.task_of_class[c1].tolist() == [1, 1]
    assert (learner.model.task_of_class[c1[-1] + 1:] == -1).all()
    assert not hasattr(learner.model, "keys")  # no key-value pairs anywhere in the model
    x, y = next(iter(torch.utils.data.DataLoader(stream.test_stream[0].dataset, batch_size=40)))
    with torch.no_grad():
        batched, looped = learner.scores(x, batched=True), learner.scores(x, batched=False)
    assert torch.allclose(batched, looped, atol=1e-5)
    pred = learner.predict(x)
    assert pred.shape == (40, stream.n_classes)
    assert set(pred.argmax(1).tolist()) <= set(c0 + c1)  # unseen classes never predicted
    assert (pred.argmax(1) == y).float().mean() > 0.5  # task 0 digits recognised well above chance (1/4)

    # resume: a fresh learner restored from the state dict predicts exactly the same
    state = learner.state_dict()
    restored = _learner(stream)
    restored.load_state_dict(state)
    assert len(restored.bank) == 2
    assert torch.equal(restored.predict(x), pred)


def test_prop_config_errors():
    with pytest.raises(ConfigError, match="reg"):
        build_config(ProPConfig, {"reg": "huge"})
    with pytest.raises(ConfigError, match="prompt_length"):
        build_config(ProPConfig, {"prompt_length": 0})


def test_prop_runs_through_the_cli(tmp_path, capsys):
    from lifelong.cli.main import main

    out = tmp_path / "run"
    rc = main(["run", "--strategy", "prop", "--benchmark", "split-digits", "--out", str(out), "--json",
               "--set", "n_experiences=2", "--set", "epochs=1", "--set", "task_labels=false"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["strategy"] == "prop" and len(results["accuracy_matrix"]) == 2
    assert results["accuracy_matrix"][0][0] > 0.5  # the first five digits, with five classes seen
    assert results["strategy_summary"]["prompt_parameters"] == 2 * 4 * 64

    # interrupted after the first experience and resumed: the same accuracy matrix as the uninterrupted run
    from lifelong.incremental.run import resolve_config, run_experiment

    config = resolve_config(strategy="prop", benchmark="split-digits", device="cpu",
                            overrides={"n_experiences": 2, "epochs": 1, "task_labels": False})
    part = run_experiment(config, out=tmp_path / "resumed", progress=False, stop_after=1)
    assert part["completed"] == 1
    resumed = run_experiment(config, out=tmp_path / "resumed", progress=False, resume=True)
    assert resumed["accuracy_matrix"] == results["accuracy_matrix"]
