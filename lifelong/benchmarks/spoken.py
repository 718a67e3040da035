"""``split-spoken-digits`` and ``split-spoken-words``: spoken words rendered by espeak-ng as class-incremental
streams (stand-ins for FSDD / AudioMNIST and for a many-class spoken-word set).

Each sample is one utterance: a float32 waveform ``[1, samples]`` at 16 kHz (``duration`` seconds, leading
silence trimmed), rendered and cached by ``benchmarks/_speech.py`` (espeak-ng and sox; ``make data`` installs
them). ``split-spoken-digits`` has the ten digit words "zero".."nine" (class i is the word for i);
``split-spoken-words`` has the ``n_words`` most frequent single-word WordNet nouns (``benchmarks/wordnet.py``;
frequency = the summed tag counts of the noun's senses in WordNet's ``cntlist.rev``; words of 3 to 10 letters,
digit words excluded, and of two words that espeak-ng pronounces the same way only the more frequent kept, so
that no two classes sound alike).

The protocol follows ``split-fashion-mnist``: the class order fixed by the seed (or given), ``n_experiences`` /
``initial_classes`` / ``uneven`` split arithmetic, labels relabelled in class order, ``train_per_class`` and
``test_per_class`` seeded draws of each word's renders. Training renders use only the training voice variants
and test renders only the test variants (``_speech.TRAIN_VARIANTS`` / ``TEST_VARIANTS``): a test speaker is never
heard in training. The stream's ``info`` names the manifest digest of the renders it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lifelong.benchmarks import _speech
from lifelong.incremental.streams import Stream, build_class_incremental_stream, resolve_class_order, split_class_counts
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class SpokenConfig:
    """Options of the spoken-word streams (those of ``split-fashion-mnist`` plus how the words are rendered)."""

    cache_dir: str = ""  # '' = $LIFELONG_CACHE/spoken (~/.cache/lifelong/spoken)
    n_experiences: int = 5
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    train_per_class: int = 60
    test_per_class: int = 20
    duration: float = 1.0  # seconds of every waveform (padded or cut)
    accents: list[str] = field(default_factory=lambda: list(_speech.ACCENTS))
    speeds: list[int] = field(default_factory=lambda: [140, 175])  # words per minute
    pitches: list[int] = field(default_factory=lambda: [35, 65])  # espeak-ng's 0..99
    augmentations: list[str] = field(default_factory=lambda: ["none", "reverb", "tempo-fast", "highpass"])
    workers: int = 2  # parallel renders
    task_labels: bool = True
    seed: int = 0

    def n_classes(self) -> int:
        return len(DIGIT_WORDS)

    def validate(self) -> None:
        for name in ("train_per_class", "test_per_class", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.1 <= self.duration <= 5.0:
            raise ValueError(f"duration must be between 0.1 and 5 seconds, got {self.duration}")
        for name, allowed in (("accents", _speech.ACCENTS), ("augmentations", tuple(_speech.AUGMENTATIONS))):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if not values or bad or len(set(values)) != len(values):
                raise ValueError(f"{name}: {bad or values!r} is not allowed (a non-empty list without repeats); "
                                 f"allowed values: {', '.join(allowed)}")
        if not self.speeds or any(not 80 <= s <= 450 for s in self.speeds) or len(set(self.speeds)) != len(self.speeds):
            raise ValueError(f"speeds: {self.speeds!r}; allowed: distinct words per minute in 80..450")
        if not self.pitches or any(not 0 <= p <= 99 for p in self.pitches) or len(set(self.pitches)) != len(self.pitches):
            raise ValueError(f"pitches: {self.pitches!r}; allowed: distinct values in 0..99")
        n = self.n_classes()
        resolve_class_order(range(n), self.seed, self.class_order, self.shuffle_classes)
        split_class_counts(n, self.n_experiences, initial_classes=self.initial_classes, uneven=self.uneven)
        _speech.require_tools()


@dataclass
class SpokenWordsConfig(SpokenConfig):
    """``split-spoken-words``: the spoken-digit options plus how many WordNet nouns and where WordNet is."""

    n_words: int = 100
    wordnet_root: str = ""  # '' = $LIFELONG_WORDNET or /usr/share/wordnet
    n_experiences: int = 10
    train_per_class: int = 16
    test_per_class: int = 8

    def n_classes(self) -> int:
        return self.n_words

    def validate(self) -> None:
        if not 2 <= self.n_words <= 1000:
            raise ValueError(f"n_words must be between 2 and 1000, got {self.n_words}")
        super().validate()


def frequent_nouns(n: int, wordnet_root: str = "") -> list[str]:
    """The ``n`` most frequent single-word WordNet nouns that espeak-ng pronounces distinctly (see the module
    docstring); ``UserError`` when WordNet has fewer."""
    import subprocess

    from lifelong.benchmarks.wordnet import open_wordnet

    wn = open_wordnet(wordnet_root or None)
    counts: dict[str, int] = {}
    for synset in wn.all_synsets("n"):
        for lemma in synset.lemmas():
            name = lemma.name()
            if name.isalpha() and name.islower() and 3 <= len(name) <= 10 and name not in DIGIT_WORDS:
                counts[name] = counts.get(name, 0) + lemma.count()
    ranked = sorted((w for w in counts if counts[w] > 0), key=lambda w: (-counts[w], w))
    words: list[str] = []
    sounds: set[str] = set()
    _speech.require_tools()
    for start in range(0, len(ranked), 64):
        if len(words) >= n:
            break
        batch = ranked[start:start + 64]
        # one espeak-ng call per batch: the phonemes of each word, one line each
        out = subprocess.run(["espeak-ng", "-q", "-x", "-v", "en-us"], input="\n".join(f"{w}." for w in batch),
                             capture_output=True, text=True, check=False).stdout.split("\n")
        phonemes = [line.strip() for line in out if line.strip()]
        for word, sound in zip(batch, phonemes if len(phonemes) == len(batch) else batch):
            if sound not in sounds and len(words) < n:
                words.append(word)
                sounds.add(sound)
    if len(words) < n:
        raise UserError(f"split-spoken-words: WordNet yields only {len(words)} distinct frequent nouns; n_words={n}")
    return words


def spoken_stream(name: str, words: Sequence[str], config: SpokenConfig, extra: dict[str, Any]) -> Stream:
    """Render (or read from the cache) both splits and build the class-incremental stream of ``words``."""
    import torch

    order = resolve_class_order(range(len(words)), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(len(words), config.n_experiences, initial_classes=config.initial_classes,
                                uneven=config.uneven)
    grid = {"accents": config.accents, "speeds": config.speeds, "pitches": config.pitches,
            "augmentations": config.augmentations}
    parts: dict[str, tuple[Any, Any]] = {}
    digests = {}
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        renders = _speech.plan(words, split, per_class, config.seed, **grid)
        paths, digests[split] = _speech.build(renders, config.cache_dir or None, config.workers)
        x = torch.from_numpy(_speech.load(paths, config.duration)).unsqueeze(1)
        labels = np.repeat(np.arange(len(words)), per_class)
        parts[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
    return build_class_incremental_stream(
        name, train_data=(x_train, y_train), train_targets=y_train.tolist(), test_data=(x_test, y_test),
        test_targets=y_test.tolist(), class_order=order, counts=counts,
        input_shape=(1, int(round(config.duration * _speech.SAMPLE_RATE))), class_names=list(words),
        task_labels=config.task_labels,
        info={"modality": "audio", "sample_rate": _speech.SAMPLE_RATE, "stand_in": True,
              "n_train": len(y_train), "n_test": len(y_test), "manifest_digest": digests,
              "train_variants": list(_speech.TRAIN_VARIANTS), "test_variants": list(_speech.TEST_VARIANTS),
              "tools": _speech.tool_versions(), **grid, **extra},
    )


@register("benchmark", "split-spoken-digits", config=SpokenConfig,
          summary="the ten digit words spoken by espeak-ng (FSDD/AudioMNIST stand-in), 16 kHz waveforms, disjoint voices")
def split_spoken_digits(config: SpokenConfig) -> Stream:
    """Build the spoken-digit stream; the seed fixes the class order and which renders are drawn."""
    return spoken_stream("split-spoken-digits", DIGIT_WORDS, config, {"dataset": "spoken digits (espeak-ng stand-in)"})


@register("benchmark", "split-spoken-words", config=SpokenWordsConfig,
          summary="frequent WordNet nouns spoken by espeak-ng, 16 kHz waveforms, disjoint train/test voices")
def split_spoken_words(config: SpokenWordsConfig) -> Stream:
    """Build the spoken-noun stream; the seed fixes the class order and which renders are drawn."""
    words = frequent_nouns(config.n_words, config.wordnet_root)
    return spoken_stream("split-spoken-words", words, config, {"dataset": "spoken WordNet nouns (espeak-ng stand-in)"})
