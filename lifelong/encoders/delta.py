"""``delta``: send-on-delta (threshold-crossing) coding of a log cochleagram, the event-camera style baseline.

What it is: per channel, the log of the cochleagram (``base.cochleagram``; floor at 1e-3 of its largest value) is
followed by a reference level; whenever the signal moves ``delta`` above (below) the reference, an ON (OFF) spike is
sent and the reference moves by ``delta``, as many times as the move holds. Two lines per channel (ON, OFF). The
rate knob sets ``delta`` per utterance by bisection (30 steps) so the count is the closest to the budget that a
single threshold gives; a count can be off the budget where one step of ``delta`` changes many channels at once.
There is no decoder in the method; ``decode`` integrates the ON/OFF steps back into the log envelope (the
threshold is known to the decoder, the channel's starting level is not: it starts at the floor) and vocodes it
(``base.vocode``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.encoders.base import EncoderConfig, SpikeEncoder, SpikeEvents, cochleagram, vocode
from lifelong.platform.registry import register

FLOOR = 1e-3


@dataclass
class DeltaConfig(EncoderConfig):
    """Send-on-delta's options: the cochleagram frame."""

    frame_ms: float = 5.0

    def validate(self) -> None:
        super().validate()
        if not 0.5 <= self.frame_ms <= 100.0:
            raise ValueError(f"frame_ms must be between 0.5 and 100, got {self.frame_ms}")


def send_on_delta(level: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel, frame, +1/-1 count) of the crossings of ``level`` ``[channels, frames]`` with threshold ``delta``,
    the reference starting at each channel's first value."""
    ref = level[:, 0].copy()
    chans, frames, signs = [], [], []
    for f in range(1, level.shape[1]):
        steps = np.fix((level[:, f] - ref) / delta)
        moved = np.flatnonzero(steps)
        if moved.size:
            ref[moved] += steps[moved] * delta
            chans.append(moved)
            frames.append(np.full(moved.size, f))
            signs.append(steps[moved])
    if not chans:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(chans), np.concatenate(frames), np.concatenate(signs)


@register("encoder", "delta", config=DeltaConfig,
          summary="send-on-delta coding of a log gammatone cochleagram (ON/OFF spikes, threshold set by the budget)")
class DeltaEncoder(SpikeEncoder):
    """Send-on-delta code (see the module docstring)."""

    config: DeltaConfig
    polarities = 2
    has_decoder = True

    @property
    def frame(self) -> int:
        return max(1, int(round(self.config.frame_ms * self.config.sample_rate / 1000)))

    def _level(self, wave: np.ndarray) -> tuple[np.ndarray, float]:
        env = cochleagram(np.asarray(wave, dtype=np.float64), self.freqs, self.config.sample_rate, self.frame)
        floor = FLOOR * max(float(env.max()), 1e-12)
        return np.log(np.maximum(env, floor)), floor

    def threshold(self, level: np.ndarray, budget: int) -> float:
        """The ``delta`` whose spike count is closest to ``budget`` (bisection on a log scale)."""
        lo, hi = 1e-4, float(np.ptp(level)) + 1.0
        best, best_gap = hi, None
        for _ in range(30):
            mid = float(np.sqrt(lo * hi))
            count = int(np.abs(send_on_delta(level, mid)[2]).sum())
            gap = abs(count - budget)
            if best_gap is None or gap < best_gap:
                best, best_gap = mid, gap
            if count > budget:
                lo = mid
            else:
                hi = mid
        return best

    def events(self, wave: np.ndarray) -> SpikeEvents:
        level, _ = self._level(wave)
        budget = self.budget(len(wave))
        if level.shape[1] < 2 or budget == 0 or np.ptp(level) == 0:
            return SpikeEvents.empty()
        delta = self.threshold(level, budget)
        chan, frm, steps = send_on_delta(level, delta)
        reps = np.abs(steps).astype(np.int64)
        self.last_delta = delta
        return SpikeEvents(np.repeat(chan, reps).astype(np.int64), np.repeat(frm * self.frame, reps).astype(np.int64),
                           (np.repeat(np.sign(steps), reps) * delta).astype(np.float32))

    def decode(self, events: SpikeEvents, samples: int) -> np.ndarray:
        n_frames = max(1, samples // self.frame)
        steps = np.zeros((self.config.channels, n_frames))
        np.add.at(steps, (events.channel, np.minimum(events.time // self.frame, n_frames - 1)), events.value)
        level = np.log(FLOOR) + np.cumsum(steps, axis=1)
        return vocode(np.exp(level), samples, self.freqs, self.config.sample_rate, self.frame)
