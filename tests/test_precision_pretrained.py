"""Mixed precision (bf16, fp16) in the pre-trained-backbone strategies and the reward head, exercised on the CPU.

What each test pins down: the training forward really runs in the reduced dtype (a forward hook sees it), the
trainable weights stay float32 and do change, prediction returns float32 logits of the stream's shape, fp16
steps go through the GradScaler, and a bad ``precision`` is refused naming the allowed values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lifelong.incremental.learner import RunContext
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # ViT steps: one thread avoids oversubscription

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _ctx(stream: Any) -> RunContext:
    return RunContext(stream=stream, device=torch.device("cpu"), seed=0)


def _batch(stream: Any, j: int, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(torch.utils.data.DataLoader(stream.test_stream[j].dataset, batch_size=n)))[:2]
    return x, y


class DtypeProbe:
    """Records (grad enabled, output dtype) of every forward of ``module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[bool, torch.dtype]] = []
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        out = out[0] if isinstance(out, tuple) else out
        self.calls.append((torch.is_grad_enabled(), out.dtype))

    def remove(self) -> None:
        self._handle.remove()


def _assert_scaler_used(scaler: Any, precision: str) -> None:
    """fp16: the GradScaler ran its update (a good step counted, or an overflow halved the scale); else it is off."""
    state = scaler.scaler.state_dict()
    if precision == "fp16":
        assert scaler.enabled and state, "fp16 must train through an enabled GradScaler"
        assert state["_growth_tracker"] > 0 or state["scale"] < 2.0 ** 16
    else:
        assert not scaler.enabled and state == {}


def _float32_and_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before and all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------------- SimE
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sime_trains_and_predicts_under_reduced_precision(stream, precision):
    from lifelong.strategies.sime import SimE, SimEConfig

    def learner(p: str) -> SimE:
        cfg = {"epochs": 1, "batch_size": 64, "adapter_dim": 8, "adapter_blocks": [-1], "precision": p}
        return SimE(build_config(SimEConfig, cfg), _ctx(stream))

    sime = learner(precision)
    adapters = sime.model.adapters
    before = {k: v.clone() for k, v in adapters.state_dict().items()}
    probe = DtypeProbe(adapters.adapters["block3_mlp"].down)
    sime.train_experience(stream.train_stream[0])
    x, y = _batch(stream, 0)
    logits = sime.predict(x)
    probe.remove()

    assert (True, DTYPES[precision]) in probe.calls  # a training forward ran in the reduced dtype
    assert probe.calls[-1] == (False, DTYPES[precision])  # and so did prediction
    _float32_and_changed(before, adapters.state_dict())
    _assert_scaler_used(sime.scaler, precision)
    assert sime.model.prototypes.dtype == torch.float32
    assert logits.dtype == torch.float32 and logits.shape == (len(x), stream.n_classes)
    assert torch.isfinite(logits).all()

    # the same computation as in float32, up to rounding: the same classes win for nearly every image
    reference = learner("fp32")
    reference.train_experience(stream.train_stream[0])
    agree = (reference.predict(x).argmax(1) == logits.argmax(1)).float().mean()
    assert agree >= 0.9
    assert (logits.argmax(1) == y).float().mean() > 0.6  # two classes seen: well above chance


# ---------------------------------------------------------------------------------------------------- ProP
def test_prop_trains_its_prompt_in_bf16_and_keeps_it_float32(stream):
    from lifelong.adapters.nets.prompts import PromptBank
    from lifelong.strategies.prop import ProP, ProPConfig

    prop = ProP(build_config(ProPConfig, {"epochs": 1, "batch_size": 64, "precision": "bf16"}), _ctx(stream))
    # the prompt ProP will draw for task 0 (the same seeded CPU generator), to see that training moved it
    start = PromptBank(prop.bank.length, prop.bank.width).add_task(
        "uniform", 1.0, torch.Generator().manual_seed(0 * 1000 + 7 + 0)).detach()
    probe = DtypeProbe(prop.backbone.blocks[0].mlp)
    prop.train_experience(stream.train_stream[0])
    x, _ = _batch(stream, 0)
    logits = prop.predict(x)
    probe.remove()

    prompt = prop.bank.prompts[0]
    assert prompt.dtype == torch.float32 and not torch.equal(prompt.detach(), start)
    assert (True, torch.bfloat16) in probe.calls and probe.calls[-1] == (False, torch.bfloat16)
    assert prop.model.prototypes.dtype == torch.float32
    assert logits.dtype == torch.float32 and logits.shape == (len(x), stream.n_classes)
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------- Continual-CLIP
def test_continual_clip_text_and_image_towers_run_in_bf16_and_store_float32(stream):
    from lifelong.strategies.continual_clip import ContinualClip, ContinualClipConfig

    def learner(p: str) -> ContinualClip:
        return ContinualClip(build_config(ContinualClipConfig, {"precision": p}), _ctx(stream))

    clip = learner("bf16")
    text_probe = DtypeProbe(clip.loaded.text.clip.transformer.resblocks[0].mlp)
    clip.train_experience(stream.train_stream[0])
    text_probe.remove()
    x, _ = _batch(stream, 0)
    image_probe = DtypeProbe(clip.backbone.blocks[0].mlp)
    logits = clip.predict(x)
    image_probe.remove()

    assert text_probe.calls and all(d == torch.bfloat16 for _, d in text_probe.calls)
    assert image_probe.calls and all(d == torch.bfloat16 for _, d in image_probe.calls)
    assert clip.model.text.dtype == torch.float32
    assert logits.dtype == torch.float32 and logits.shape == (len(x), stream.n_classes)
    reference = learner("fp32")
    reference.train_experience(stream.train_stream[0])
    c0 = stream.classes_per_experience[0]
    assert torch.allclose(clip.model.text[c0], reference.model.text[c0], atol=0.05)  # unit vectors, bf16 rounding


# ----------------------------------------------------------------------------------------------------- L2P
def test_l2p_trains_through_the_grad_scaler_in_fp16(stream):
    from lifelong.strategies.l2p import L2P, L2PConfig

    l2p = L2P(build_config(L2PConfig, {"epochs": 1, "batch_size": 64, "precision": "fp16"}), _ctx(stream))
    trainable = {n: p.detach().clone() for n, p in l2p.model.vit.named_parameters() if p.requires_grad}
    probe = DtypeProbe(l2p.model.vit.head)
    l2p.train_experience(stream.train_stream[0])
    x, _ = _batch(stream, 0)
    logits = l2p.predict(x)
    probe.remove()

    after = {n: p.detach() for n, p in l2p.model.vit.named_parameters() if p.requires_grad}
    _float32_and_changed(trainable, after)
    assert (True, torch.float16) in probe.calls and probe.calls[-1] == (False, torch.float16)
    _assert_scaler_used(l2p.strategy.scaler, "fp16")
    assert logits.dtype == torch.float32 and logits.shape == (len(x), stream.n_classes)
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------- the configs
@pytest.mark.parametrize("strategy", ["sime", "prop", "continual-clip", "l2p"])
def test_an_unknown_precision_is_refused_naming_the_allowed_values(strategy):
    from lifelong.platform import registry

    spec = registry.get("strategy", strategy)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        build_config(spec.config, {"precision": "fp8"})


def test_run_cli_takes_precision_bf16_and_refuses_fp8(tmp_path, capsys):
    from lifelong.cli.main import main

    out = tmp_path / "run"
    common = ["run", "--strategy", "sime", "--benchmark", "split-digits", "--json", "--set", "n_experiences=2",
              "--set", "epochs=1", "--set", "train_per_class=20", "--set", "adapter_dim=8"]
    assert main([*common, "--out", str(out), "--set", "precision=bf16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["strategy_config"]["precision"] == "bf16"
    assert results["accuracy_matrix"][0][0] > 0.4  # five classes seen: well above chance (0.2)
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--set", "precision=fp8"]) == 2
    assert "precision must be one of fp32, bf16, fp16" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- reward head
def test_reward_head_trains_in_fp16_with_float32_weights(tmp_path: Path):
    from lifelong.benchmarks.preferences import bundled_preferences
    from lifelong.platform.registry import create
    from lifelong.scorers.reward_model import RewardHead

    pairs = bundled_preferences("train")[:20]
    rm = create("scorer", "scalar-rm", epochs=3, cache_dir=str(tmp_path), precision="fp16")
    embed_dim = rm.featurize([(pairs[0].prompt, pairs[0].chosen)]).emb.shape[1]
    torch.manual_seed(0)  # the head's initialisation under the config's seed, as fit draws it
    start = RewardHead(embed_dim, {}, rm.config.hidden, rm.config.dropout).state_dict()
    seen: list[tuple[bool, torch.dtype]] = []
    original_init = RewardHead.__init__

    def probed_init(self: RewardHead, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.text[1].register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RewardHead, "__init__", probed_init)
        rm.fit(pairs)

    assert (True, torch.float16) in seen
    assert rm.head is not None
    after = rm.head.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(start[k], after[k]) for k in start if k.startswith("text."))
    assert rm.scaler is not None
    _assert_scaler_used(rm.scaler, "fp16")
    r = rm.score(pairs[0].prompt, pairs[0].chosen)
    assert r.reward == pytest.approx(sum(r.contributions.values()), abs=1e-5)

    rm.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert saved["precision"] == "fp16" and "device" not in saved  # the device is the run's, not the model's


def test_reward_config_refuses_unknown_precision_and_device():
    from lifelong.platform.registry import create

    with pytest.raises(UserError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        create("scorer", "scalar-rm", precision="fp8")
    with pytest.raises(UserError, match="device must be one of auto, cpu, cuda, cuda:N, got 'gpu'"):
        create("scorer", "srm", device="gpu", branches=["style"])
