"""split-event-fashion-mnist on small IDX files in the real format: the saccade path, the rendering, the layout of
the event frames, the options and checks it shares with split-fashion-mnist, and strategies running on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_fashion_mnist import write_fashion

from lifelong.benchmarks.event_camera import EventCameraConfig, simulate_events
from lifelong.benchmarks.event_fashion_mnist import (
    SplitEventFashionMNISTConfig,
    event_frames,
    render_saccades,
    saccade_path,
)
from lifelong.platform import registry
from lifelong.platform.config import ConfigError


def build(root: Path, **config: object):
    return registry.create("benchmark", "split-event-fashion-mnist",
                           **{"data_root": str(root), "verify_checksums": False, "train_per_class": 0,
                              "test_per_class": 0, **config})


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion(tmp_path_factory.mktemp("fashion"), train=3, test=2)


def test_the_saccade_path_is_a_closed_triangle_of_three_saccades() -> None:
    path = saccade_path(4.0, 5)
    assert path.shape == (16, 2) and np.allclose(path[0], path[-1])
    corners = path[[0, 5, 10]]
    sides = [np.linalg.norm(corners[i] - corners[(i + 1) % 3]) for i in range(3)]
    assert np.isclose(sides[1], 4.0) and np.isclose(sides[0], sides[2])  # isosceles
    assert np.abs(path).max() <= 2.0  # stays within the canvas margin of amplitude / 2


def test_rendering_centres_the_image_and_moves_it_by_whole_pixels_exactly() -> None:
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 10, 12] = 255
    video = render_saccades(image, 34, np.array([[0.0, 0.0], [1.0, -2.0]]), black_level=0.1)
    assert video.shape == (2, 1, 34, 34) and video.min() == pytest.approx(0.1)
    assert video[0, 0, 13, 15] == pytest.approx(1.0)  # offset (34 - 28) / 2 = 3
    assert video[1, 0, 14, 13] == pytest.approx(1.0)  # one row down, two columns left
    half = render_saccades(image, 34, np.array([[0.0, 0.5]]), black_level=0.0)
    assert half[0, 0, 13, 15] == pytest.approx(0.5) and half[0, 0, 13, 16] == pytest.approx(0.5)


def test_the_frames_are_the_binned_events_of_the_rendered_video() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 28, 28)).astype(np.uint8)
    cfg = SplitEventFashionMNISTConfig(n_bins=3, steps_per_saccade=4)
    frames = event_frames(images, cfg, seed=0)
    assert frames.shape == (2, 6, 34, 34)
    path = saccade_path(cfg.amplitude, cfg.steps_per_saccade)
    times = np.arange(len(path)) * 0.025
    video = render_saccades(images, 34, path, cfg.black_level)
    events = simulate_events(video[:, 1], times, EventCameraConfig(contrast_threshold=cfg.contrast_threshold))
    assert frames[1].sum() == len(events) > 100
    assert frames[1, 0::2].sum() == (events["p"] > 0).sum()  # channels 2t are ON


def test_the_stream_has_the_split_and_the_event_layout(fashion_root: Path) -> None:
    stream = build(fashion_root, n_bins=4, shuffle_classes=False, task_labels=False)
    assert stream.n_experiences == 5 and stream.n_classes == 10 and stream.input_shape == (8, 34, 34)
    x, y = stream.train_stream[0].dataset[0][:2]
    assert x.dtype == torch.float32 and x.shape == (8, 34, 34) and int(y) in (0, 1)
    assert float(x.sum()) > 0 and torch.equal(x, x.round())  # event counts
    assert stream.info["n_train"] == 30 and "stand-in" in stream.info["dataset"]
    again = build(fashion_root, n_bins=4, shuffle_classes=False, task_labels=False)
    assert torch.equal(again.test_stream[1].dataset.eval()[0][0], stream.test_stream[1].dataset.eval()[0][0])


def test_the_options_and_checks_of_split_fashion_mnist(fashion_root: Path, tmp_path: Path) -> None:
    stream = build(fashion_root, n_experiences=2, initial_classes=6, train_per_class=2, class_order=list(range(10)))
    assert [len(c) for c in stream.classes_per_experience] == [6, 4] and stream.info["n_train"] == 20
    with pytest.raises(ConfigError, match="do not divide"):
        build(fashion_root, n_experiences=3)
    with pytest.raises(ConfigError, match="no Fashion-MNIST files"):
        build(tmp_path)
    with pytest.raises(Exception, match="not the official Fashion-MNIST"):
        build(fashion_root, verify_checksums=True)


@pytest.mark.parametrize("bad, match", [({"n_bins": 0}, "n_bins"), ({"canvas": 30}, "canvas"),
                                        ({"contrast_threshold": -1.0}, "contrast_threshold"),
                                        ({"black_level": 1.0}, "black_level")])
def test_bad_options_are_refused_by_name(fashion_root: Path, bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(fashion_root, **bad)


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(cli, fashion_root: Path, tmp_path: Path) -> None:
    result = cli("run", "--strategy", "naive", "--benchmark", "split-event-fashion-mnist",
                 "--set", f"data_root={fashion_root}", "--set", "n_bins=0", "--out", str(tmp_path / "r"))
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1 and "n_bins" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("strategy, model", [("naive", "hsvt"), ("replay", "cnn-28"), ("der", "cnn-28")])
def test_strategies_run_on_the_event_stream(cli, fashion_root: Path, tmp_path: Path, strategy: str, model: str) -> None:
    result = cli("run", "--strategy", strategy, "--benchmark", "split-event-fashion-mnist",
                 "--set", f"data_root={fashion_root}", "--set", "verify_checksums=false", "--set", "n_bins=3",
                 "--set", "n_experiences=2", "--set", "epochs=1", "--set", f"model={model}",
                 "--out", str(tmp_path / "r"))
    assert result.code == 0, result.stderr
    assert (tmp_path / "r" / "results.json").is_file()
