"""``spiketrum``: sound to spikes by matching pursuit over a gammatone dictionary, with an exact spike budget.

Paper: Tang, Gu, Wijekoon, Alsakkal, Wang, Shen, Yan, "Neuromorphic Auditory Perception by Neural Spiketrum"
(arXiv 2309.05430). Its abstract claims an analog-to-spike coding with little information loss, robustness to
spike loss and jitter, and a precisely controllable spike rate; the algorithm's details are not public. This
module follows the reading third parties give of it, a matching-pursuit sparse code (Smith and Lewicki's
"spikegram"), and labels its decoder a reconstruction:

- the dictionary: ``channels`` gammatone kernels (``scipy.signal.gammatone``'s FIR form) at ERB-spaced centre
  frequencies between ``fmin`` and ``fmax``, each cut where it holds 99 % of its energy and scaled to unit norm;
- the code: repeatedly take the (kernel, time shift) whose correlation with the residual is largest in magnitude,
  emit a spike (channel = kernel, time = the kernel's onset, value = the correlation), subtract the scaled kernel;
  stop after exactly ``round(spikes_per_second x duration)`` spikes (the rate knob, met exactly unless the
  residual vanishes first) or when the residual's energy falls below ``min_residual`` of the signal's;
- the decoder: the sum of the chosen kernels scaled by their values. With ``amplitudes=False`` each spike carries
  only its sign and the channel's median magnitude (what a spike train without graded values could tell).

Where it departs or fills gaps: the correlations are computed once by FFT and then updated locally from the
kernels' cross-correlations (exact, the textbook fast matching pursuit), with block maxima so that each spike costs
a few block scans instead of a scan of the whole signal; the network sees spike counts per time step on two lines
per channel (positive and negative values); the values themselves are kept for the decoder only. The cochlea
hardware of the paper is out of scope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.encoders.base import EncoderConfig, SpikeEncoder, SpikeEvents
from lifelong.platform.registry import register

BLOCK = 256  # samples per block of the running maxima


@dataclass
class SpiketrumConfig(EncoderConfig):
    """Spiketrum's options: the shared ones plus the kernel length cap and the early stop."""

    max_kernel_ms: float = 64.0
    min_residual: float = 1e-6  # stop when the residual's energy is below this share of the signal's

    def validate(self) -> None:
        super().validate()
        if not 1.0 <= self.max_kernel_ms <= 256.0:
            raise ValueError(f"max_kernel_ms must be between 1 and 256, got {self.max_kernel_ms}")
        if not 0.0 <= self.min_residual < 1.0:
            raise ValueError(f"min_residual must be in [0, 1), got {self.min_residual}")


def gammatone_kernels(freqs: np.ndarray, fs: int, max_len: int) -> list[np.ndarray]:
    """Unit-norm gammatone impulse responses, each cut where it holds 99 % of its energy."""
    from scipy.signal import gammatone

    kernels = []
    for f in freqs:
        b, _ = gammatone(float(f), "fir", fs=fs, numtaps=max_len)
        energy = np.cumsum(b ** 2) / np.sum(b ** 2)
        k = np.asarray(b[: int(np.searchsorted(energy, 0.99)) + 1], dtype=np.float64)
        kernels.append(k / np.linalg.norm(k))
    return kernels


@register("encoder", "spiketrum", config=SpiketrumConfig,
          summary="Spiketrum (Tang et al.): matching pursuit over ERB-spaced gammatone kernels, exact spikes/s, decoder")
class Spiketrum(SpikeEncoder):
    """Matching-pursuit spike code (see the module docstring)."""

    polarities = 2
    has_decoder = True
    config: SpiketrumConfig

    def __init__(self, config: SpiketrumConfig) -> None:
        super().__init__(config)
        self.kernels = gammatone_kernels(self.freqs, config.sample_rate, int(config.max_kernel_ms * config.sample_rate / 1000))
        self.width = max(len(k) for k in self.kernels)
        padded = np.zeros((len(self.kernels), self.width))
        for i, k in enumerate(self.kernels):
            padded[i, : len(k)] = k
        self.padded = padded
        # cross[c, d, width - 1 + s] = <kernel c at shift s, kernel d at shift 0>, s in (-width, width)
        n = 2 * self.width - 1
        spec = np.fft.rfft(padded, n=2 * n)
        full = np.fft.irfft(spec[:, None, :] * np.conj(spec[None, :, :]), n=2 * n)
        self.cross = np.concatenate([full[..., -(self.width - 1):], full[..., : self.width]], axis=-1) \
            if self.width > 1 else full[..., :1]
        import torch

        self._cross_t = torch.from_numpy(self.cross.astype(np.float32))  # what the pursuit updates from

    def correlations(self, wave: np.ndarray) -> np.ndarray:
        """``corr[c, t]`` = <wave, kernel c starting at t> for t in [0, samples) (zero padded past the end)."""
        from scipy.signal import fftconvolve

        x = np.concatenate([wave, np.zeros(self.width)])
        corr = fftconvolve(x[None, :], self.padded[:, ::-1], mode="valid", axes=1)
        return corr[:, : wave.size]

    def events(self, wave: np.ndarray) -> SpikeEvents:
        import torch

        wave = np.asarray(wave, dtype=np.float64)
        n, c_count, w = wave.size, len(self.kernels), self.width
        energy = float(np.dot(wave, wave))
        budget = self.budget(n)
        if energy == 0.0 or budget == 0 or n == 0:
            return SpikeEvents.empty()
        n_blocks = -(-n // BLOCK)
        corr = torch.zeros(c_count, n_blocks * BLOCK, dtype=torch.float32)
        corr[:, :n] = torch.from_numpy(self.correlations(wave))
        cross = self._cross_t
        blockmax = corr.abs().reshape(c_count, n_blocks, BLOCK).amax(dim=2)
        chans, times, vals = [], [], []
        residual, stop = energy, self.config.min_residual * energy
        for _ in range(budget):
            c, b = divmod(int(torch.argmax(blockmax)), n_blocks)
            t = b * BLOCK + int(torch.argmax(corr[c, b * BLOCK:(b + 1) * BLOCK].abs()))
            a = float(corr[c, t])
            if a == 0.0:
                break
            chans.append(c)
            times.append(t)
            vals.append(a)
            residual -= a * a
            lo, hi = max(0, t - w + 1), min(n, t + w)
            corr[:, lo:hi].sub_(cross[c, :, lo - t + w - 1: hi - t + w - 1], alpha=a)
            b_lo, b_hi = lo // BLOCK, -(-hi // BLOCK)
            blockmax[:, b_lo:b_hi] = corr[:, b_lo * BLOCK: b_hi * BLOCK].abs().reshape(c_count, -1, BLOCK).amax(dim=2)
            if residual <= stop:
                break
        return SpikeEvents(np.asarray(chans, np.int64), np.asarray(times, np.int64), np.asarray(vals, np.float32))

    def decode(self, events: SpikeEvents, samples: int, amplitudes: bool = True) -> np.ndarray:
        """The waveform rebuilt as the sum of the spikes' kernels; ``amplitudes=False`` uses only each spike's
        sign and its channel's median magnitude."""
        out = np.zeros(samples + self.width)
        values = events.value.astype(np.float64)
        if not amplitudes and len(events):
            values = values.copy()
            for c in np.unique(events.channel):
                sel = events.channel == c
                values[sel] = np.sign(values[sel]) * np.median(np.abs(values[sel]))
        for c, t, v in zip(events.channel, events.time, values):
            k = self.kernels[int(c)]
            out[int(t): int(t) + len(k)] += v * k
        return out[:samples]
