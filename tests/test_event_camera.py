"""The event-camera simulator on scenes whose events can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifelong.benchmarks.event_camera import (
    EventCameraConfig,
    events_to_frames,
    simulate_events,
    simulate_frames,
)

DARK, BRIGHT = 0.49, 0.79  # log((0.79 + 0.01) / (0.49 + 0.01)) = ln 1.6 = 0.470: one event at C = 0.3, not two


def edge_video(shift: int = 1, height: int = 5, width: int = 8, edge: int = 4) -> np.ndarray:
    """Two frames of a vertical step edge (bright left of column ``edge``, dark right) moved ``shift`` pixels."""
    frames = np.full((2, height, width), DARK)
    frames[0, :, :edge] = BRIGHT
    frames[1, :, :edge + shift] = BRIGHT
    return frames


def test_a_still_scene_gives_no_event_without_noise() -> None:
    video = np.repeat(np.random.default_rng(0).uniform(0, 1, (1, 6, 7)), 5, axis=0)
    assert len(simulate_events(video, np.arange(5) * 0.01, EventCameraConfig(contrast_threshold=0.1))) == 0
    assert not simulate_frames(video, np.arange(5) * 0.01, 3).any()


def test_a_still_scene_gives_only_noise_at_the_noise_rate() -> None:
    video = np.full((11, 20, 20), 0.5)
    cfg = EventCameraConfig(noise_rate=5.0)
    events = simulate_events(video, np.linspace(0, 1.0, 11), cfg, np.random.default_rng(1))
    # 400 pixels x 5 Hz x 1 s = 2,000 expected; a Poisson count is within 4 sigma (about 180)
    assert abs(len(events) - 2000) < 180
    assert set(np.unique(events["p"]).tolist()) == {-1, 1}
    assert np.all(np.diff(events["t"]) >= 0)


def test_a_step_edge_moving_one_pixel_gives_one_on_event_per_pixel_of_the_edge() -> None:
    events = simulate_events(edge_video(), np.array([0.0, 0.01]), EventCameraConfig(contrast_threshold=0.3))
    assert len(events) == 5  # one per row of the edge
    assert set(events["x"].tolist()) == {4} and sorted(events["y"].tolist()) == [0, 1, 2, 3, 4]
    assert set(events["p"].tolist()) == {1}  # dark -> bright: ON
    # the crossing at ref + C on a linear ramp of ln 1.6 over 10 ms
    assert np.allclose(events["t"], 0.01 * 0.3 / math.log(1.6))


def test_an_edge_moving_the_other_way_gives_off_events() -> None:
    video = edge_video()[::-1].copy()
    events = simulate_events(video, np.array([0.0, 0.01]), EventCameraConfig(contrast_threshold=0.3))
    assert len(events) == 5 and set(events["p"].tolist()) == {-1} and set(events["x"].tolist()) == {4}


def test_a_large_change_gives_one_event_per_threshold_and_the_refractory_period_suppresses_the_second() -> None:
    # 0.04 -> 0.15 in log(I + 0.01): ln 3.2 = 1.163, three crossings of C = 0.35 at 0.301, 0.602, 0.903 of the way
    video = np.array([[[0.04]], [[0.15]]])
    times = np.array([0.0, 1.0])
    events = simulate_events(video, times, EventCameraConfig(contrast_threshold=0.35))
    assert len(events) == 3 and set(events["p"].tolist()) == {1}
    assert np.allclose(events["t"], [0.35 * k / math.log(3.2) for k in (1, 2, 3)])
    # a refractory period of 0.4 s: the crossing 0.301 s after the first is suppressed, the third is not
    events = simulate_events(video, times, EventCameraConfig(contrast_threshold=0.35, refractory=0.4))
    assert np.allclose(events["t"], [0.35 / math.log(3.2), 1.05 / math.log(3.2)])
    # the suppressed change is lost: holding the new intensity gives no late event
    held = np.concatenate([video, video[1:]])
    assert len(simulate_events(held, np.array([0.0, 1.0, 2.0]),
                               EventCameraConfig(contrast_threshold=0.35, refractory=0.4))) == 2


def test_the_reference_carries_the_remainder_across_frames() -> None:
    # two half-threshold steps make one event, at the second interval
    video = np.exp(np.array([0.0, 0.15, 0.30]))[:, None, None] - 0.01
    events = simulate_events(video, np.array([0.0, 1.0, 2.0]), EventCameraConfig(contrast_threshold=0.3))
    assert len(events) == 1 and 1.0 < events["t"][0] <= 2.0


def test_binned_frames_are_the_binned_event_list() -> None:
    rng = np.random.default_rng(3)
    videos = rng.uniform(0, 1, (9, 3, 6, 5))
    times = np.linspace(0, 0.08, 9)
    cfg = EventCameraConfig(contrast_threshold=0.15, refractory=0.005)
    frames = simulate_frames(videos, times, 4, cfg)
    assert frames.shape == (3, 4, 2, 6, 5) and frames.sum() > 0
    for b in range(3):
        events = simulate_events(videos[:, b], times, cfg)
        assert np.array_equal(frames[b], events_to_frames(events, 4, 6, 5, 0.0, 0.08))
        assert frames[b, :, 0].sum() == (events["p"] > 0).sum()


@pytest.mark.parametrize("bad", [{"contrast_threshold": 0.0}, {"refractory": -1.0}, {"noise_rate": -0.5},
                                 {"eps": 0.0}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        EventCameraConfig(**bad).validate()


def test_bad_videos_are_refused() -> None:
    with pytest.raises(ValueError, match="times must increase"):
        simulate_events(np.zeros((2, 3, 3)), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="one time per frame"):
        simulate_events(np.zeros((3, 3, 3)), np.array([0.0, 1.0]))
