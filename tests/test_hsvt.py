"""HsVT and its baselines: shapes, the windowed attention's partitions, the temporal module's state across bins,
the ``model=hsvt`` backbone, the CenterNet targets and decoding, and the event-detection benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_fashion_mnist import write_fashion

from lifelong.adapters.nets.backbones import build_backbone
from lifelong.adapters.nets.hsvt import HsVTDetector, SpikingTemporal, WindowAttention
from lifelong.detection.centernet import decode, detection_loss, make_targets
from lifelong.detection.models import DETECTORS, build_detector, n_parameters
from lifelong.platform import registry
from lifelong.platform.config import ConfigError


@pytest.mark.parametrize("mode", ["block", "grid"])
def test_window_partition_and_merge_are_inverse_and_group_the_right_tokens(mode: str) -> None:
    attn = WindowAttention(8, heads=2, window=2, mode=mode)
    x = torch.arange(16.0).view(1, 4, 4, 1).expand(1, 4, 4, 8).contiguous()
    windows, shape = attn._partition(x)
    assert torch.equal(attn._merge(windows, shape), x)
    first = sorted(windows[0, :, 0].tolist())
    assert first == ([0.0, 1.0, 4.0, 5.0] if mode == "block" else [0.0, 2.0, 8.0, 10.0])


def test_attention_keeps_shapes_on_maps_that_do_not_divide_and_ignores_the_padding() -> None:
    torch.manual_seed(0)
    attn = WindowAttention(8, heads=2, window=4, mode="block").eval()
    x = torch.randn(2, 8, 5, 6)
    y = attn(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert attn.matmul_macs == 2 * 2 * 4 * 16 * 16 * 8  # 2 samples x 4 windows (padded to 8x8), L = 16, dim 8
    # a 2x2 map in one 4x4 window (12 padded tokens) gives what a 2x2 window over the 4 real tokens gives
    small = torch.randn(2, 8, 2, 2)
    exact = WindowAttention(8, heads=2, window=2, mode="block").eval()
    exact.load_state_dict(attn.state_dict())
    assert torch.allclose(attn(small), exact(small), atol=1e-5)
    attn(x)
    assert attn.matmul_macs == 2 * 2 * 4 * 16 * 16 * 8  # 2 samples x 4 windows, L = 16, dim 8


def test_the_temporal_module_remembers_across_bins_unless_memory_is_off() -> None:
    torch.manual_seed(0)
    layer = SpikingTemporal(4, 4)
    with torch.no_grad():
        layer.inp[0].weight.fill_(1.0)
        layer.rec.weight.zero_()
        layer.beta_logit.fill_(10.0)  # beta ~ 1: no leak
    layer.eval()
    x = torch.zeros(3, 1, 4, 2, 2)
    x[0] = 0.6  # input in the first bin only
    # BN in eval with default stats: current = 4 * 0.6 / sqrt(1 + eps) = 2.4 -> spikes at bins 0 and 1 (soft reset)
    out = layer(x)
    assert out[0].all() and out[1].all() and not out[2].any()
    layer.memory = False
    out = layer(x)
    assert out[0].all() and not out[1:].any()


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_gives_per_bin_maps_and_trains(name: str) -> None:
    torch.manual_seed(0)
    model = build_detector(name, 2, 3, dim=8)
    frames = torch.rand(2, 3, 2, 32, 32).round()
    out = model(frames)
    assert out["heatmap"].shape == (2, 3, 3, 8, 8) and out["size"].shape == (2, 3, 2, 8, 8)
    boxes = np.array([[[4, 4, 12, 12]], [[10, 10, 20, 30]]] * 3, np.float32).reshape(6, 1, 4)
    targets = make_targets(boxes, np.array([[0], [2]] * 3), 3, (8, 8), 4)
    loss = detection_loss({k: v.flatten(0, 1) for k, v in out.items()}, targets)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_conv_lstm_baseline_is_sized_like_hsvt() -> None:
    hsvt, lstm = n_parameters(build_detector("hsvt", 2, 2, 16)), n_parameters(build_detector("conv-lstm", 2, 2, 16))
    assert abs(lstm - hsvt) / hsvt < 0.05


def test_targets_and_decoding_round_trip_a_box() -> None:
    boxes = np.array([[[10.0, 20.0, 26.0, 30.0]]], np.float32)
    t = make_targets(boxes, np.array([[1]]), 2, (16, 16), 4)
    assert t["heatmap"][0, 1].max() == 1.0 and t["heatmap"][0, 0].max() == 0.0
    assert int(t["index"][0, 0]) == 6 * 16 + 4  # centre (18, 25) / 4 -> cell (4, 6)
    logits = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))
    size = torch.zeros(1, 2, 16, 16)
    size[0, :, 6, 4] = torch.tensor([16.0, 10.0])
    offset = torch.zeros(1, 2, 16, 16)
    offset[0, :, 6, 4] = t["offset"][0, 0]
    found = decode({"heatmap": logits, "size": size, "offset": offset}, 4, top_k=1)[0]
    assert found.labels.tolist() == [1] and np.allclose(found.boxes[0], [10, 20, 26, 30], atol=1e-4)


def test_hsvt_backbone_reads_bins_from_channels_and_gives_logits() -> None:
    net = build_backbone("hsvt", (6, 34, 34), 10)
    assert net(torch.rand(3, 6, 34, 34)).shape == (3, 10) and net.feature_dim == 64
    assert net.features.polarities == 2
    assert build_backbone("hsvt", (1, 28, 28), 4)(torch.rand(2, 1, 28, 28)).shape == (2, 4)  # one bin


def test_the_hsvt_detector_sees_the_first_bin_in_the_last_through_its_state() -> None:
    torch.manual_seed(0)
    model = HsVTDetector(2, 2, dim=8).eval()
    a = torch.zeros(1, 4, 2, 32, 32)
    b = a.clone()
    b[0, 0, :, 8:16, 8:16] = 1.0  # events only in bin 0
    with torch.no_grad():
        diff = (model(a)["heatmap"] - model(b)["heatmap"]).abs().flatten(2).amax(-1)[0]
        model.temporal.memory = False
        diff_off = (model(a)["heatmap"] - model(b)["heatmap"]).abs().flatten(2).amax(-1)[0]
    assert diff[0] > 0 and diff_off[1:].max() == 0 and diff_off[0] > 0


# ------------------------------------------------------------------------------------------- the benchmark
@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion(tmp_path_factory.mktemp("fashion"), train=3, test=2)


def small(root: Path, **config: object):
    return registry.create("benchmark", "event-detection", **{
        "data_root": str(root), "verify_checksums": False, "n_train": 6, "n_test": 4, "canvas": 32, "sprite": 8,
        "n_bins": 6, **config})


def test_event_detection_clips_have_exact_boxes_and_still_fallen_objects_emit_nothing(fashion_root: Path) -> None:
    data = small(fashion_root, fall_probability=1.0, max_objects=1)
    assert data.frame_shape == (6, 2, 32, 32) and data.class_names == ["walking", "fallen"]
    split = data.train
    assert (split.labels[:, -1, 0] == 1).all()  # every object has fallen by the end
    assert (split.labels[:, 0, 0] == 0).all()  # and walks in the first bin
    assert split.still.any()
    for i, b in zip(*np.nonzero(split.still[:, :, 0])):
        assert split.frames[i, b].sum() == 0  # one object, still: no event in the bin
    boxes = split.boxes[split.labels >= 0]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32 + 1e-4).all()


def test_walkers_never_stop_and_the_seed_fixes_the_clips(fashion_root: Path) -> None:
    data = small(fashion_root, fall_probability=0.0)
    assert (data.train.labels <= 0).all() and not data.train.still.any()
    again = small(fashion_root, fall_probability=0.0)
    assert torch.equal(again.test.frames, data.test.frames) and np.array_equal(again.test.boxes, data.test.boxes)


@pytest.mark.parametrize("bad, match", [({"canvas": 30}, "canvas"), ({"sprite": 2}, "sprite"),
                                        ({"fall_probability": 2.0}, "fall_probability")])
def test_bad_benchmark_options_are_refused(fashion_root: Path, bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        small(fashion_root, **bad)


# ------------------------------------------------------------------------------------------ lifelong detect
TINY = ["--set", "n_train=4", "--set", "n_test=3", "--set", "canvas=32", "--set", "sprite=8", "--set", "n_bins=3",
        "--set", "epochs=1", "--set", "dim=8", "--set", "verify_checksums=false"]


def test_detect_trains_evaluates_and_writes_results(cli, fashion_root: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "d"
    result = cli("detect", "--model", "hsvt", "--set", f"data_root={fashion_root}", *TINY, "--seed", "3",
                 "--out", str(out))
    assert result.code == 0, result.stderr
    assert "mAP@0.5" in result.stdout and "stand-in" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["seed"] == 3 and saved["model"] == "hsvt" and saved["config"]["model_config"]["dim"] == 8
    assert saved["config"]["benchmark_config"]["n_train"] == 4 and "torch" in saved["versions"]
    assert 0 <= saved["map_50"] <= 1 and len(saved["metrics"]["per_bin_map_50"]) == 3
    assert saved["parameters"] > 0 and saved["ops_per_frame"]["macs"] > 0
    from safetensors.torch import load_file

    assert any(k.startswith("spatial.") for k in load_file(str(out / "model.safetensors")))


@pytest.mark.parametrize("args, match", [
    (["--model", "yolo"], "model"),
    (["--benchmark", "split-digits"], "not detection clips"),
    (["--set", "nonsense=1"], "unknown config key 'nonsense'"),
    (["--set", "epochs=0"], "epochs"),
    (["--set", "canvas=30"], "canvas"),
])
def test_detect_bad_input_is_one_line_exit_2_and_writes_nothing(cli, fashion_root: Path, tmp_path: Path,
                                                                 args: list, match: str) -> None:
    out = tmp_path / "d"
    result = cli("detect", *args, "--set", f"data_root={fashion_root}", "--out", str(out))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr and not out.exists()
