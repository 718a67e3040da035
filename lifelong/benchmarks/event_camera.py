"""A simulated event camera (dynamic vision sensor): a video of intensities in, ON/OFF events or binned frames out.

Follows the pixel model that v2e (Hu, Liu and Delbruck 2021) and ESIM (Rebecq, Gehrig and Scaramuzza 2018) use
to turn video into events, the way the N-MNIST and Gen1 style data sets were recorded with real sensors:

- each pixel keeps a reference log intensity ``ref = log(I + eps)``, set from the first frame;
- between two frames the log intensity is taken to move linearly in time (ESIM's piecewise-linear assumption);
  every time it crosses ``ref + C`` an ON event (+1) is emitted and ``ref`` moves up by ``C``, every time it
  crosses ``ref - C`` an OFF event (-1) and ``ref`` moves down by ``C`` (C: ``contrast_threshold``, the same
  for both polarities); an event's timestamp is the crossing time, interpolated within the frame interval;
- a refractory period: a crossing less than ``refractory`` seconds after the pixel's last event emits nothing.
  The choice made where the papers differ: the reference still moves by ``C`` (the pixel's differencing
  circuit is held in reset during the refractory time, so the change seen then is lost, not delayed);
- background-activity noise: each pixel fires noise events as a Poisson process of ``noise_rate`` events per
  second, with a random polarity and a uniform time; noise events leave the reference and the refractory
  clock untouched (v2e's shot noise, without its leak events, which a constant-rate term already stands in for).

Not modelled (departures, for a stand-in that must run on two CPU cores): per-pixel threshold mismatch, the
photoreceptor low-pass filter, leak events and the read-out bandwidth limit. A perfectly still scene therefore
emits no event at all unless ``noise_rate`` > 0, which is the property the detection stand-in relies on.

Two outputs from one core (``_crossings``): ``simulate_events`` returns the event list (``t``, ``x``, ``y``,
``p``, sorted by time) and ``simulate_frames`` accumulates the same events straight into ``T`` time bins with
two polarity channels (channel 0 ON, channel 1 OFF), batched over many videos at once, which is what the
benchmarks use (``events_to_frames`` bins a list the same way; a test checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: the structured dtype of an event list
EVENT_DTYPE = np.dtype([("t", np.float64), ("x", np.int16), ("y", np.int16), ("p", np.int8)])


@dataclass
class EventCameraConfig:
    """The sensor's settings (v2e's names in brackets)."""

    contrast_threshold: float = 0.2  # log-intensity change per event [pos_thres, neg_thres]
    refractory: float = 0.0  # seconds a pixel stays blind after an event [refractory_period_s]
    noise_rate: float = 0.0  # background events per pixel per second [shot_noise_rate_hz]
    eps: float = 0.01  # offset inside the logarithm, so black pixels have a finite log intensity

    def validate(self) -> None:
        if not self.contrast_threshold > 0:
            raise ValueError(f"contrast_threshold must be positive, got {self.contrast_threshold}")
        if self.refractory < 0:
            raise ValueError(f"refractory must be 0 (none) or positive seconds, got {self.refractory}")
        if self.noise_rate < 0:
            raise ValueError(f"noise_rate must be 0 (none) or positive (events per pixel per second), "
                             f"got {self.noise_rate}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")


def _check_video(video: np.ndarray, times: np.ndarray) -> None:
    if video.ndim < 3:
        raise ValueError(f"video must be [frames, ..., H, W], got shape {video.shape}")
    if times.shape != (video.shape[0],):
        raise ValueError(f"times must hold one time per frame ({video.shape[0]}), got shape {times.shape}")
    if video.shape[0] < 2:
        raise ValueError("video needs at least two frames")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times must increase strictly")
    if np.nanmin(video) < 0 or not np.isfinite(video).all():
        raise ValueError("video intensities must be finite and non-negative")


def _crossings(video: np.ndarray, times: np.ndarray, config: EventCameraConfig,
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The threshold-crossing events of ``video`` ``[N, ...]`` at ``times`` ``[N]``: yields, frame interval by
    interval and crossing by crossing, ``(pixel, t, polarity)`` arrays, one entry per event: the flat index of
    the pixel in ``video[0]``, the time, +1 (ON) or -1 (OFF). Only the pixels that cross are computed on."""
    config.validate()
    c = float(config.contrast_threshold)
    log = np.log(video.reshape(len(times), -1).astype(np.float64) + config.eps)
    ref = log[0].copy()
    last = np.full(ref.shape, -np.inf)
    for i in range(1, len(times)):
        t0, t1 = float(times[i - 1]), float(times[i])
        # crossings this interval; the tiny tolerance keeps an exact multiple of C (e.g. ln 2 with C = ln 2) one
        n_all = np.floor(np.abs(log[i] - ref) / c + 1e-9).astype(np.int64)
        active = np.flatnonzero(n_all)
        if not active.size:
            continue
        n, l0, l1, r = n_all[active], log[i - 1, active], log[i, active], ref[active]
        sign = np.sign(l1 - r)
        slope = np.where(l1 == l0, 1.0, l1 - l0)
        for k in range(1, int(n.max()) + 1):
            sel = np.flatnonzero(n >= k)
            pix = active[sel]
            frac = np.clip((r[sel] + k * sign[sel] * c - l0[sel]) / slope[sel], 0.0, 1.0)
            t = t0 + (t1 - t0) * frac
            fire = t - last[pix] >= config.refractory
            last[pix[fire]] = t[fire]
            yield pix[fire], t[fire], sign[sel][fire].astype(np.int8)
        ref[active] = r + n * sign * c


def _noise(shape: tuple[int, ...], t_start: float, t_end: float, rate: float, rng: np.random.Generator,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background-activity events over ``[t_start, t_end)``: ``(flat pixel index, t, polarity)``."""
    n_pixels = int(np.prod(shape))
    counts = rng.poisson(rate * (t_end - t_start), size=n_pixels)
    idx = np.repeat(np.arange(n_pixels), counts)
    t = rng.uniform(t_start, t_end, size=idx.size)
    p = rng.choice(np.array([1, -1], dtype=np.int8), size=idx.size)
    return idx, t, p


def simulate_events(video: np.ndarray, times: np.ndarray, config: EventCameraConfig | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The events of one video ``[N, H, W]`` (intensities >= 0) sampled at ``times`` (seconds): a structured
    array of ``EVENT_DTYPE`` (t, x = column, y = row, p = +1/-1), sorted by time."""
    config = config or EventCameraConfig()
    video, times = np.asarray(video), np.asarray(times, dtype=np.float64)
    _check_video(video, times)
    if video.ndim != 3:
        raise ValueError(f"simulate_events takes one video [frames, H, W], got shape {video.shape}")
    parts = []
    for pix, t, sign in _crossings(video, times, config):
        part = np.empty(len(pix), EVENT_DTYPE)
        part["t"], part["y"], part["x"], part["p"] = t, pix // video.shape[2], pix % video.shape[2], sign
        parts.append(part)
    if config.noise_rate > 0:
        idx, t, p = _noise(video.shape[1:], float(times[0]), float(times[-1]), config.noise_rate,
                           rng or np.random.default_rng(0))
        part = np.empty(len(idx), EVENT_DTYPE)
        part["t"], part["y"], part["x"], part["p"] = t, idx // video.shape[2], idx % video.shape[2], p
        parts.append(part)
    events = np.concatenate(parts) if parts else np.empty(0, EVENT_DTYPE)
    return events[np.argsort(events["t"], kind="stable")]


def time_bin(t: np.ndarray, t_start: float, t_end: float, n_bins: int) -> np.ndarray:
    """The bin of each time in ``n_bins`` equal bins over ``[t_start, t_end]`` (the end falls in the last bin)."""
    b = np.floor((np.asarray(t) - t_start) / (t_end - t_start) * n_bins).astype(np.int64)
    return np.clip(b, 0, n_bins - 1)


def events_to_frames(events: np.ndarray, n_bins: int, height: int, width: int, t_start: float, t_end: float,
                     ) -> np.ndarray:
    """Event counts in ``n_bins`` equal time bins: float32 ``[n_bins, 2, H, W]``, channel 0 ON, 1 OFF."""
    frames = np.zeros((n_bins, 2, height, width), np.float32)
    b = time_bin(events["t"], t_start, t_end, n_bins)
    channel = (events["p"] < 0).astype(np.int64)
    np.add.at(frames, (b, channel, events["y"].astype(np.int64), events["x"].astype(np.int64)), 1.0)
    return frames


def simulate_frames(video: np.ndarray, times: np.ndarray, n_bins: int, config: EventCameraConfig | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The binned events of a batch of videos ``[N, B, H, W]`` sampled at ``times``: float32
    ``[B, n_bins, 2, H, W]`` (the same events ``simulate_events`` lists, without building the list)."""
    config = config or EventCameraConfig()
    video, times = np.asarray(video), np.asarray(times, dtype=np.float64)
    if video.ndim == 3:
        video = video[:, None]
    _check_video(video, times)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    _, batch, height, width = video.shape
    frames = np.zeros((batch, n_bins, 2, height, width), np.float32)
    t_start, t_end = float(times[0]), float(times[-1])
    cells = []  # the flat index into ``frames`` of every event
    for pix, t, sign in _crossings(video, times, config):
        bb, rest = np.divmod(pix, height * width)  # rest = y * W + x
        b = time_bin(t, t_start, t_end, n_bins)
        cells.append(((bb * n_bins + b) * 2 + (sign < 0)) * (height * width) + rest)
    if cells:
        frames += np.bincount(np.concatenate(cells), minlength=frames.size).reshape(frames.shape)
    if config.noise_rate > 0:
        idx, t, p = _noise((batch, height, width), t_start, t_end, config.noise_rate, rng or np.random.default_rng(0))
        bb, rest = np.divmod(idx, height * width)
        yy, xx = np.divmod(rest, width)
        np.add.at(frames, (bb, time_bin(t, t_start, t_end, n_bins), (p < 0).astype(np.int64), yy, xx), 1.0)
    return frames
