"""``split-av-digits``: audio-visual digits, each sample an 8x8 digit image and a spoken word of the same digit
(a stand-in for CREMA-D and AVE, the audio-visual sets of the TAAF paper, which cannot be had offline).

How a sample is made: for class c, the i-th image of c drawn (seeded) from scikit-learn's digits (its stratified
train/test split, as ``split-digits``) is paired with the i-th render of the word for c from ``split-spoken-digits``
(``benchmarks/_speech.py``: training voices for training pairs, test voices for test pairs). The sample is one
float vector ``[64 + samples]``: the image's 64 pixels in [0, 1], then the waveform; ``info`` says where each part
is (``image_shape``, ``audio_samples``), and the fusion extractors (``adapters/nets/fusion.py``) split it.

The dials, applied to training and test pairs alike (seeded per sample):

- modality imbalance: ``image_noise`` (std of Gaussian noise added to the pixels, then clipped to [0, 1]) and
  ``audio_noise`` (white noise added with this RMS relative to the utterance's RMS: 1.0 is 0 dB SNR, 0 = clean),
  so that either modality can be made the weak one;
- temporal misalignment: ``onset_shift_ms``, the most by which the audio is delayed (uniform in [0, max] per
  sample; the waveform is shifted and cut at its end), which moves the audio spikes against the image's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lifelong.benchmarks import _speech
from lifelong.benchmarks.spoken import DIGIT_WORDS
from lifelong.incremental.streams import Stream, build_class_incremental_stream, resolve_class_order, split_class_counts
from lifelong.platform.registry import register

IMAGE_SHAPE = (1, 8, 8)


@dataclass
class AVDigitsConfig:
    """Options of ``split-av-digits``: the split arithmetic of ``split-digits``, the renders of the spoken digits,
    and the imbalance and misalignment dials."""

    cache_dir: str = ""
    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    train_per_class: int = 40
    test_per_class: int = 20
    duration: float = 1.0
    image_noise: float = 0.0
    audio_noise: float = 0.0
    onset_shift_ms: float = 0.0
    accents: list[str] = field(default_factory=lambda: list(_speech.ACCENTS))
    speeds: list[int] = field(default_factory=lambda: [140, 175])
    pitches: list[int] = field(default_factory=lambda: [35, 65])
    augmentations: list[str] = field(default_factory=lambda: ["none", "reverb", "tempo-fast", "highpass"])
    workers: int = 2
    task_labels: bool = True
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.train_per_class <= 120 or not 1 <= self.test_per_class <= 50:
            raise ValueError(f"train_per_class must be in 1..120 and test_per_class in 1..50 (the digit images of a "
                             f"class), got {self.train_per_class}, {self.test_per_class}")
        if self.image_noise < 0 or self.audio_noise < 0:
            raise ValueError(f"image_noise and audio_noise must be non-negative, got {self.image_noise}, "
                             f"{self.audio_noise}")
        if not 0 <= self.onset_shift_ms < 1000 * self.duration:
            raise ValueError(f"onset_shift_ms must be in [0, duration), got {self.onset_shift_ms}")
        if not 0.1 <= self.duration <= 5.0:
            raise ValueError(f"duration must be between 0.1 and 5 seconds, got {self.duration}")
        resolve_class_order(range(10), self.seed, self.class_order, self.shuffle_classes)
        split_class_counts(10, self.n_experiences, initial_classes=self.initial_classes, uneven=self.uneven)
        _speech.require_tools()


def _images(split: str, per_class: int, seed: int) -> np.ndarray:
    """``[10 * per_class, 64]``: ``per_class`` images of each digit from the split, class-major, seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx_train, idx_test = train_test_split(np.arange(len(digits.target)), test_size=0.3, stratify=digits.target,
                                           random_state=seed)
    idx = idx_train if split == "train" else idx_test
    rng = np.random.default_rng([seed, 7, 0 if split == "train" else 1])
    out = [rng.permutation(idx[digits.target[idx] == c])[:per_class] for c in range(10)]
    return np.concatenate([digits.data[i] / 16.0 for i in out]).astype(np.float32)


def degrade(images: np.ndarray, waves: np.ndarray, config: AVDigitsConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply the dials (see the module docstring) with a generator seeded by the seed and the split."""
    rng = np.random.default_rng([config.seed, 11, 0 if split == "train" else 1])
    images = images.copy()
    waves = waves.copy()
    if config.image_noise > 0:
        images = np.clip(images + rng.normal(0, config.image_noise, images.shape), 0, 1).astype(np.float32)
    if config.audio_noise > 0:
        rms = np.sqrt(np.mean(waves ** 2, axis=1, keepdims=True))
        noise = rng.standard_normal(waves.shape) * rms * config.audio_noise
        waves = (waves + noise).astype(np.float32)
    if config.onset_shift_ms > 0:
        shifts = rng.integers(0, int(config.onset_shift_ms * _speech.SAMPLE_RATE / 1000) + 1, len(waves))
        for i, s in enumerate(shifts):
            if s:
                waves[i] = np.concatenate([np.zeros(s, np.float32), waves[i, :-s]])
    return images, waves


@register("benchmark", "split-av-digits", config=AVDigitsConfig,
          summary="digit images paired with spoken digits (CREMA-D/AVE stand-in), imbalance and onset-shift dials")
def split_av_digits(config: AVDigitsConfig) -> Stream:
    """Build the audio-visual stream; the seed fixes the class order, the images and renders drawn, the dials."""
    import torch

    grid = {"accents": config.accents, "speeds": config.speeds, "pitches": config.pitches,
            "augmentations": config.augmentations}
    parts, digests = {}, {}
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        renders = _speech.plan(DIGIT_WORDS, split, per_class, config.seed, **grid)
        paths, digests[split] = _speech.build(renders, config.cache_dir or None, config.workers)
        images, waves = degrade(_images(split, per_class, config.seed), _speech.load(paths, config.duration),
                                config, split)
        x = torch.from_numpy(np.concatenate([images, waves], axis=1))
        parts[split] = (x, torch.from_numpy(np.repeat(np.arange(10), per_class).astype(np.int64)))
    order = resolve_class_order(range(10), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(10, config.n_experiences, initial_classes=config.initial_classes, uneven=config.uneven)
    (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
    samples = int(round(config.duration * _speech.SAMPLE_RATE))
    return build_class_incremental_stream(
        "split-av-digits", train_data=(x_train, y_train), train_targets=y_train.tolist(), test_data=(x_test, y_test),
        test_targets=y_test.tolist(), class_order=order, counts=counts, input_shape=(64 + samples,),
        class_names=list(DIGIT_WORDS), task_labels=config.task_labels,
        info={"modality": "audio-visual", "image_shape": list(IMAGE_SHAPE), "audio_samples": samples,
              "sample_rate": _speech.SAMPLE_RATE, "stand_in": True, "manifest_digest": digests,
              "image_noise": config.image_noise, "audio_noise": config.audio_noise,
              "onset_shift_ms": config.onset_shift_ms, "dataset": "digits + spoken digits (CREMA-D/AVE stand-in)"},
    )
