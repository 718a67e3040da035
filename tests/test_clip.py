"""open_clip / timm backbones, input transforms, parallel adapters and local checkpoints (adapters/nets/clip.py)."""

from __future__ import annotations

import pytest
import torch

from lifelong.adapters.nets.clip import (
    BottleneckAdapter,
    VisionBackbone,
    attach_adapters,
    freeze,
    load_backbone,
    read_state_dict,
    resolve_blocks,
    save_weights,
)
from lifelong.adapters.nets.transforms import ImageFit
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", seed=0)


def _small_timm() -> VisionBackbone:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    return VisionBackbone(vit.eval())


def test_image_fit_resizes_grey_digits_to_rgb():
    fit = ImageFit(32, 3, mean=None, std=None)
    x = torch.rand(4, 1, 8, 8)
    y = fit(x)
    assert y.shape == (4, 3, 32, 32)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey copied to every channel
    # a constant image stays constant through resizing
    assert torch.allclose(fit(torch.full((1, 1, 8, 8), 0.25)), torch.full((1, 3, 32, 32), 0.25))
    norm = ImageFit(8, 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(norm(torch.full((1, 3, 8, 8), 0.75)), torch.ones(1, 3, 8, 8))
    grey = ImageFit(16, 1, mean=None, std=None)(torch.rand(2, 3, 64, 64))
    assert grey.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="B, C, H, W"):
        fit(torch.rand(2, 2, 3, 4, 5))


def test_vision_backbone_matches_the_models_own_forward(tiny):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tiny.visual(x), tiny.text.clip.encode_image(x), atol=1e-6)
        tb = _small_timm()
        assert torch.allclose(tb(x), tb.visual(x), atol=1e-6)
    assert tiny.visual.out_dim == 32 and tiny.visual.width == 64 and len(tiny.visual.blocks) == 4
    # prompts change the output and are removed before pooling
    p = torch.randn(2, tiny.visual.width)
    with torch.no_grad():
        assert tiny.visual(x, p).shape == (3, 32)
        assert not torch.allclose(tiny.visual(x, p), tiny.visual(x))


@pytest.mark.parametrize("which", ["open_clip", "timm"])
def test_adapters_start_as_identity_and_only_they_train(tiny, which):
    backbone = tiny.visual if which == "open_clip" else _small_timm()
    freeze(backbone)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = backbone(x).clone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    aset = attach_adapters(backbone, [0, 1], sites=("mlp", "attn"), bottleneck=8, scale=0.5)
    try:
        with torch.no_grad():
            assert torch.equal(backbone(x), ref)  # zero up-projection: exactly the frozen model
        d, r = backbone.width, 8
        assert aset.n_parameters() == 2 * 2 * (d * r + r + r * d + d)
        init = {k: v.clone() for k, v in aset.state_dict().items()}
        opt = torch.optim.SGD(aset.parameters(), lr=0.5)
        target = torch.randn_like(ref)
        for _ in range(3):
            loss = (backbone(x) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = backbone.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # backbone bit-identical
        assert any(not torch.equal(init[k], v) for k, v in aset.state_dict().items())
        with torch.no_grad():
            assert not torch.allclose(backbone(x), ref)
    finally:
        aset.detach()
    with torch.no_grad():
        assert torch.equal(backbone(x), ref)  # hooks removed: the original model again


def test_adapter_config_errors(tiny):
    assert resolve_blocks([], 4) == [0, 1, 2, 3]
    assert resolve_blocks([-1, 0, 0], 4) == [0, 3]
    with pytest.raises(ConfigError, match="adapter_blocks: block 7"):
        resolve_blocks([7], 4)
    with pytest.raises(ConfigError, match="allowed values: mlp, attn"):
        attach_adapters(tiny.visual, [0], sites=("ffn",))
    a = BottleneckAdapter(16, 4)
    assert torch.equal(a(torch.randn(2, 16)), torch.zeros(2, 16))


def test_local_checkpoint_round_trips(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    save_weights(tiny.text.clip, path)
    other = load_backbone("tiny", seed=1)  # different random weights...
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(other.visual(x), tiny.visual(x))
    loaded = load_backbone("tiny", pretrained=str(path), seed=1)  # ...until the file is loaded
    assert loaded.weights == f"file:{path}"
    ref, got = tiny.text.clip.state_dict(), loaded.text.clip.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # a torch file with a DDP "module." prefix and a {"state_dict": ...} wrapper also loads (weights_only)
    pt = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, pt)
    assert set(read_state_dict(pt)) == set(ref)
    again = load_backbone("tiny", pretrained=str(pt), seed=2)
    with torch.no_grad():
        assert torch.equal(again.visual(x), tiny.visual(x))


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("tiny", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99")
    bad = tmp_path / "bad.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1, 2, 3)}, bad)
    with pytest.raises(UserError, match="visual.conv1.weight has shape"):
        load_backbone("tiny", pretrained=str(bad))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_backbone("tiny", pretrained=str(junk))


def test_text_tower_embeds_class_names(tiny):
    emb = tiny.text.class_embeddings(["cat", "dog", "cat"], ["a bad photo of a {}.", "a photo of a {}."])
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])


def test_open_clip_without_embeds_and_pool_helpers(tiny, monkeypatch):
    """Older open_clip releases lack VisionTransformer._embeds/_pool; the inline fallback gives the same output."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny.visual(x, torch.ones(2, tiny.visual.width))
        cls = type(tiny.visual.visual)
        monkeypatch.delattr(cls, "_embeds")
        monkeypatch.delattr(cls, "_pool")
        assert not hasattr(tiny.visual.visual, "_embeds")
        assert torch.allclose(tiny.visual(x, torch.ones(2, tiny.visual.width)), ref, atol=1e-6)


def test_image_fit_undoes_a_streams_own_normalisation():
    from lifelong.adapters.nets.transforms import stream_normalization

    mean, std = stream_normalization({"normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}})
    assert mean == (0.5, 0.4, 0.3) and std == (0.2, 0.25, 0.3)
    assert stream_normalization({}) == (None, None)
    x01 = torch.rand(2, 3, 8, 8)
    normalised = (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    fit = ImageFit(8, 3, mean=None, std=None, input_mean=mean, input_std=std)
    assert torch.allclose(fit(normalised), x01, atol=1e-6)
