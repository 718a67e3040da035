"""``rate``: Poisson rate coding of a gammatone cochleagram, the usual baseline of auditory spike coding.

What it is: the cochleagram (``base.cochleagram``: ERB-spaced gammatone filters, half-wave rectified, averaged
over ``frame_ms`` frames) is compressed by a power law (``compression``, 1/3 as in loudness models) and each
(channel, frame) fires a Poisson number of spikes with mean ``budget x cell / sum of cells``, so the expected
count meets ``spikes_per_second`` exactly and the count got varies by about its square root. Spikes sit at the
start of their frame. The draws come from a generator seeded by the waveform (the same sound, the same spikes).
There is no decoder in the method; ``decode`` rebuilds the envelope as spike counts per frame and vocodes it
(``base.vocode``), to measure what the code keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.encoders.base import EncoderConfig, SpikeEncoder, SpikeEvents, cochleagram, vocode
from lifelong.platform.registry import register


@dataclass
class RateConfig(EncoderConfig):
    """Rate coding's options: the cochleagram frame and the compression exponent."""

    frame_ms: float = 5.0
    compression: float = 1.0 / 3.0

    def validate(self) -> None:
        super().validate()
        if not 0.5 <= self.frame_ms <= 100.0:
            raise ValueError(f"frame_ms must be between 0.5 and 100, got {self.frame_ms}")
        if not 0.0 < self.compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {self.compression}")


@register("encoder", "rate", config=RateConfig,
          summary="Poisson rate coding of a gammatone cochleagram (expected spikes/s = the budget)")
class RateEncoder(SpikeEncoder):
    """Poisson rate code (see the module docstring)."""

    config: RateConfig
    has_decoder = True

    @property
    def frame(self) -> int:
        return max(1, int(round(self.config.frame_ms * self.config.sample_rate / 1000)))

    def events(self, wave: np.ndarray) -> SpikeEvents:
        env = cochleagram(np.asarray(wave, dtype=np.float64), self.freqs, self.config.sample_rate, self.frame)
        env = env ** self.config.compression
        total = env.sum()
        if total <= 0:
            return SpikeEvents.empty()
        counts = self.rng(wave).poisson(self.budget(len(wave)) * env / total)
        chan, frm = np.nonzero(counts)
        reps = counts[chan, frm]
        return SpikeEvents(np.repeat(chan, reps).astype(np.int64), np.repeat(frm * self.frame, reps).astype(np.int64),
                           np.ones(int(reps.sum()), np.float32))

    def decode(self, events: SpikeEvents, samples: int) -> np.ndarray:
        n_frames = max(1, samples // self.frame)
        env = np.zeros((self.config.channels, n_frames))
        np.add.at(env, (events.channel, np.minimum(events.time // self.frame, n_frames - 1)), 1.0)
        return vocode(env ** (1.0 / self.config.compression), samples, self.freqs, self.config.sample_rate, self.frame)
