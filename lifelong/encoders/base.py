"""The spike-encoder contract (plugin kind ``encoder``): a waveform batch in, a time-major spike tensor out.

Why a kind of its own: how sound becomes spikes is a choice independent of the network and of the strategy that
trains it, and the encoders' own claims (information kept, rate control, robustness) are measured on the encoder
alone (``bench/spike_encoders.py``). Strategies reach an encoder through the registry by name (``encoder=NAME``),
never by import.

The contract, ``SpikeEncoder``:

- ``events(wave)``: one waveform (float ``[samples]``) -> ``SpikeEvents``, the spikes as (channel, sample index,
  value) triples; ``value`` is the spike's amplitude where the method gives one (Spiketrum's coefficient), else
  +1 / -1 (polarity) or 1;
- ``encode(waves)``: a batch ``[B, samples]`` or ``[B, 1, samples]`` -> spike counts ``[T, B, channels_out]``:
  the events binned into ``steps`` equal time steps, one input line per channel and polarity (``output_shape``).
  A waveform's encoding is memoised by the hash of its bytes, so a training loop that sees the same utterance
  every epoch encodes it once (stochastic encoders draw from a generator seeded by that hash: the same waveform
  always gives the same spikes);
- ``decode(events, samples)``: the waveform rebuilt from the spikes, where the method has a decoder
  (``has_decoder``); the baselines have none in their papers: theirs rebuild the cochleagram envelope the spikes
  code and ``vocode`` it (tones at the centre frequencies), the most an envelope code allows (no phase).

Shared pieces: an ERB-spaced centre-frequency scale (Glasberg and Moore 1990) and a gammatone cochleagram from
``scipy.signal.gammatone`` (4th-order IIR filters, half-wave rectified, averaged over ``frame_ms`` frames), which the
rate, latency and send-on-delta baselines code.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the most waveforms one encoder keeps encoded in memory
CACHE_SIZE = 100_000


@dataclass
class EncoderConfig:
    """Options every encoder shares: the filterbank, the rate knob and the time steps the network sees."""

    sample_rate: int = 16000
    channels: int = 32
    fmin: float = 100.0
    fmax: float = 7000.0
    spikes_per_second: float = 1000.0  # the spike budget (the rate knob)
    steps: int = 25  # time steps T of the spike tensor (1 s -> 40 ms steps)
    seed: int = 0

    def validate(self) -> None:
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be at least 1000 Hz, got {self.sample_rate}")
        if not 1 <= self.channels <= 256:
            raise ValueError(f"channels must be between 1 and 256, got {self.channels}")
        if not 0 < self.fmin < self.fmax < self.sample_rate / 2:
            raise ValueError(f"need 0 < fmin < fmax < sample_rate/2 = {self.sample_rate / 2:g}; got fmin={self.fmin}, "
                             f"fmax={self.fmax}")
        if self.spikes_per_second <= 0:
            raise ValueError(f"spikes_per_second must be positive, got {self.spikes_per_second}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


@dataclass
class SpikeEvents:
    """The spikes of one waveform: parallel arrays of channel, sample index and value."""

    channel: np.ndarray
    time: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.channel.size)

    @staticmethod
    def empty() -> "SpikeEvents":
        return SpikeEvents(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def subset(self, keep: np.ndarray) -> "SpikeEvents":
        """The events where ``keep`` (a mask or index array) says."""
        return SpikeEvents(self.channel[keep], self.time[keep], self.value[keep])


def erb_space(fmin: float, fmax: float, n: int) -> np.ndarray:
    """``n`` centre frequencies equally spaced on the ERB-number scale (Glasberg and Moore 1990), low to high."""
    def to_erb(f: np.ndarray | float) -> Any:
        return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f))

    def from_erb(e: np.ndarray) -> np.ndarray:
        return (10.0 ** (e / 21.4) - 1.0) / 0.00437

    return from_erb(np.linspace(to_erb(fmin), to_erb(fmax), n))


def gammatone_bank(freqs: np.ndarray, fs: int, wave: np.ndarray) -> np.ndarray:
    """The outputs ``[channels, samples]`` of scipy's 4th-order IIR gammatone filters at ``freqs``."""
    from scipy.signal import gammatone, lfilter

    out = np.empty((len(freqs), wave.size), dtype=np.float64)
    for i, f in enumerate(freqs):
        b, a = gammatone(float(f), "iir", fs=fs)
        out[i] = lfilter(b, a, wave)
    return out


def cochleagram(wave: np.ndarray, freqs: np.ndarray, fs: int, frame: int) -> np.ndarray:
    """Half-wave rectified gammatone outputs averaged over frames of ``frame`` samples: ``[channels, frames]``."""
    bank = np.maximum(gammatone_bank(freqs, fs, wave), 0.0)
    n = bank.shape[1] // frame
    return bank[:, : n * frame].reshape(len(freqs), n, frame).mean(axis=2)


def vocode(envelope: np.ndarray, samples: int, freqs: np.ndarray, fs: int, frame: int) -> np.ndarray:
    """A waveform from an envelope ``[channels, frames]``: each channel's envelope, smoothed over five frames,
    modulates a tone at its centre frequency. An envelope code keeps no phase, so the sample-wise SNR of such a
    rebuild stays near 0 dB even when its spectrum is close; it is what the baselines' ``decode`` use."""
    kernel = np.hanning(7)[1:-1]
    kernel /= kernel.sum()
    env = np.stack([np.convolve(e, kernel, mode="same") for e in envelope]) if len(envelope) else envelope
    up = np.repeat(env, frame, axis=1)[:, :samples]
    if up.shape[1] < samples:
        up = np.pad(up, ((0, 0), (0, samples - up.shape[1])))
    t = np.arange(samples) / fs
    return (up * np.sin(2 * np.pi * freqs[:, None] * t[None, :])).sum(axis=0)


class SpikeEncoder:
    """Base of every encoder (see the module docstring); subclasses implement ``events`` and may ``decode``."""

    #: polarity lines per channel in the spike tensor (2: one for positive, one for negative values)
    polarities: int = 1
    has_decoder: bool = False

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config
        self.freqs = erb_space(config.fmin, config.fmax, config.channels)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    # -- what a method implements ----------------------------------------------------------------------------
    def events(self, wave: np.ndarray) -> SpikeEvents:
        raise NotImplementedError

    def decode(self, events: SpikeEvents, samples: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no decoder")

    # -- shared --------------------------------------------------------------------------------------------
    @property
    def channels_out(self) -> int:
        return self.config.channels * self.polarities

    def output_shape(self) -> tuple[int, int]:
        """(input lines, time steps) of the spike tensor a network receives per sample."""
        return self.channels_out, self.config.steps

    def budget(self, samples: int) -> int:
        """How many spikes the rate knob asks for a waveform of ``samples`` samples."""
        return int(round(self.config.spikes_per_second * samples / self.config.sample_rate))

    def rng(self, wave: np.ndarray) -> np.random.Generator:
        """A generator seeded by the waveform's bytes and the encoder's seed (same waveform, same spikes)."""
        digest = hashlib.blake2b(np.ascontiguousarray(wave, dtype=np.float32).tobytes(), digest_size=8).digest()
        return np.random.default_rng([int.from_bytes(digest, "little"), self.config.seed])

    def bin(self, events: SpikeEvents, samples: int) -> np.ndarray:
        """Spike counts ``[steps, channels_out]``: events binned into ``steps`` equal time steps; a negative value
        goes to the channel's second polarity line when the encoder has two."""
        steps = self.config.steps
        out = np.zeros((steps, self.channels_out), dtype=np.float32)
        if len(events):
            step = np.minimum(events.time * steps // max(1, samples), steps - 1)
            line = events.channel * self.polarities + ((events.value < 0) if self.polarities == 2 else 0)
            np.add.at(out, (step, line), 1.0)
        return out

    def encode(self, waves: Any) -> Any:
        """A batch of waveforms (tensor ``[B, samples]`` or ``[B, 1, samples]``) -> spike counts ``[T, B, lines]``
        on the batch's device (memoised per waveform)."""
        import torch

        x = waves.detach().float().cpu().reshape(len(waves), -1).numpy()
        rows = []
        for wave in x:
            key = hashlib.blake2b(wave.tobytes(), digest_size=16).digest()
            hit = self._cache.get(key)
            if hit is None:
                hit = self.bin(self.events(wave.astype(np.float64)), wave.size)
                self._cache[key] = hit
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            rows.append(hit)
        return torch.from_numpy(np.stack(rows, axis=1)).to(waves.device)

    __call__ = encode

    def __getstate__(self) -> dict[str, Any]:  # deep copies (model clones) share nothing mutable but the config
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state
