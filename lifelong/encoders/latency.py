"""``latency``: time-to-first-spike coding of a gammatone cochleagram (one spike per channel and window at most).

What it is: the cochleagram (``base.cochleagram``) is cut into windows of ``window_ms``; in each window a channel's
peak value p decides when it fires: at ``(1 - p / P)`` of the way through the window, P being the utterance's
largest peak, so louder means earlier. The rate knob keeps the ``budget`` largest (channel, window) peaks and
silences the rest; the most it can give is channels x windows spikes (1,280 a second with 32 channels and 25 ms
windows), and it gives fewer when asked for more. There is no decoder in the method; ``decode`` reads each spike's
peak back from its latency (relative to P, so the overall scale is lost) and vocodes the envelope (``base.vocode``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.encoders.base import EncoderConfig, SpikeEncoder, SpikeEvents, cochleagram, vocode
from lifelong.platform.registry import register


@dataclass
class LatencyConfig(EncoderConfig):
    """Latency coding's options: the cochleagram frame and the coding window."""

    frame_ms: float = 5.0
    window_ms: float = 25.0

    def validate(self) -> None:
        super().validate()
        if not 0.5 <= self.frame_ms <= 100.0:
            raise ValueError(f"frame_ms must be between 0.5 and 100, got {self.frame_ms}")
        if self.window_ms < self.frame_ms:
            raise ValueError(f"window_ms must be at least frame_ms ({self.frame_ms}), got {self.window_ms}")


@register("encoder", "latency", config=LatencyConfig,
          summary="time-to-first-spike coding of a gammatone cochleagram: louder fires earlier in each window")
class LatencyEncoder(SpikeEncoder):
    """Latency code (see the module docstring)."""

    config: LatencyConfig
    has_decoder = True

    @property
    def frame(self) -> int:
        return max(1, int(round(self.config.frame_ms * self.config.sample_rate / 1000)))

    @property
    def window(self) -> int:
        return max(self.frame, int(round(self.config.window_ms * self.config.sample_rate / 1000)))

    def events(self, wave: np.ndarray) -> SpikeEvents:
        env = cochleagram(np.asarray(wave, dtype=np.float64), self.freqs, self.config.sample_rate, self.frame)
        per = self.window // self.frame
        n_win = env.shape[1] // per
        if n_win == 0:
            return SpikeEvents.empty()
        peak = env[:, : n_win * per].reshape(env.shape[0], n_win, per).max(axis=2)
        top = float(peak.max())
        if top <= 0:
            return SpikeEvents.empty()
        order = np.argsort(-peak, axis=None, kind="stable")[: self.budget(len(wave))]
        order = order[peak.flat[order] > 0]
        chan, win = np.unravel_index(order, peak.shape)
        offset = np.floor((1.0 - peak[chan, win] / top) * (self.window - 1)).astype(np.int64)
        keep = np.lexsort((chan, win * self.window + offset))
        return SpikeEvents(chan[keep].astype(np.int64), (win * self.window + offset)[keep],
                           np.ones(len(keep), np.float32))

    def decode(self, events: SpikeEvents, samples: int) -> np.ndarray:
        n_frames = max(1, samples // self.frame)
        per = self.window // self.frame
        env = np.zeros((self.config.channels, n_frames))
        win, offset = events.time // self.window, events.time % self.window
        level = 1.0 - offset / max(1, self.window - 1)
        for c, w, v in zip(events.channel, win, level):
            env[int(c), int(w) * per: int(w + 1) * per] = v
        return vocode(env, samples, self.freqs, self.config.sample_rate, self.frame)
