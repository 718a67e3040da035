"""Spoken words rendered by Debian's ``espeak-ng`` speech synthesiser and ``sox``, cached with a manifest.

Why: the auditory data sets of the spiking papers (FSDD, AudioMNIST, CREMA-D, AVE) cannot be had offline, but a
real synthesiser can render any word in many accents and voice variants, at any speed and pitch, in a few
milliseconds. This module is the reproducible builder the spoken benchmarks share:

- a **render** is one (word, accent, variant, speed, pitch, augmentation): ``espeak-ng -w`` writes the word, then
  ``sox`` turns it into 16 kHz mono 16-bit PCM and applies the augmentation (reverberation, tempo, a high-pass
  filter, a gain change, or none), with dithering off (``-D -R``): sox dithers with fresh noise by default, so
  the same inputs would give different bytes;
- a **speaker** is an (accent, variant) pair; the variants are split once into training and test variants
  (every fourth variant in the fixed list below is a test variant), so a test voice is never heard in training,
  whatever the accent;
- the **cache**: each render is a WAV file named by the sha256 of its inputs (the word, the voice, speed, pitch,
  the sox effect, the sample rate, and the versions of espeak-ng and sox), under ``cache_dir`` (default
  ``$LIFELONG_CACHE/spoken``, ``~/.cache/lifelong/spoken``); ``manifest.json`` there lists every render with its
  inputs, their hash and the sha256 of the WAV bytes. A render is made again only when an input changes (a new
  file name) or when its file no longer has the bytes the manifest recorded. Files and the manifest are written
  atomically (``platform/atomic.py``), so an interrupted build leaves no half-written file; a build holds the
  cache's lock (``.lock``, waiting for another process's build to end), so parallel runs share one cache.

Loading trims the leading silence (samples below 1 % of the utterance's peak) and pads or cuts each utterance to
``duration`` seconds; the waveform is float32 in [-1, 1].
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lifelong.platform.atomic import atomic_write_text, atomic_write_with
from lifelong.platform.config import ConfigError
from lifelong.platform.errors import UserError

SAMPLE_RATE = 16000
BUILDER_VERSION = 2
#: the English accents of espeak-ng 1.51 (its own voices, not the optional MBROLA ones)
ACCENTS: tuple[str, ...] = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                            "en-029", "en-us-nyc")
#: voice variants of espeak-ng 1.51 (``espeak-ng --voices=variant``) that give speech, not effects; every fourth
#: one (index 3, 7, ...) is a test variant
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak",
                             "klatt", "klatt2", "klatt3", "adam", "Alex", "Andy", "Annie", "david", "ed", "edward",
                             "john", "linda", "max", "Mike", "paul", "rob", "robert", "steph", "quincy", "belinda",
                             "benjamin", "grandma", "grandpa", "whisper")
TEST_VARIANTS: tuple[str, ...] = VARIANTS[3::4]
TRAIN_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v not in TEST_VARIANTS)
#: augmentation name -> sox effect arguments
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "reverb": ("reverb", "40"),
    "tempo-slow": ("tempo", "0.9"),
    "tempo-fast": ("tempo", "1.1"),
    "highpass": ("highpass", "300"),
    "quiet": ("gain", "-8"),
}
INSTALL = "install them with `apt-get install espeak-ng sox` (or `make data`)"


@dataclass(frozen=True)
class Render:
    """One utterance to make: a word said by a speaker (accent + variant) at a speed and pitch, augmented."""

    word: str
    accent: str
    variant: str
    speed: int
    pitch: int
    augmentation: str

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"

    def inputs(self, versions: dict[str, str]) -> dict[str, object]:
        """Everything the WAV bytes depend on (what the cache key hashes)."""
        return {"word": self.word, "voice": self.voice, "speed": self.speed, "pitch": self.pitch,
                "sox_effect": list(AUGMENTATIONS[self.augmentation]), "sample_rate": SAMPLE_RATE,
                "builder": BUILDER_VERSION, **versions}

    def key(self, versions: dict[str, str]) -> str:
        """sha256 of the inputs, the render's file name."""
        return hashlib.sha256(json.dumps(self.inputs(versions), sort_keys=True).encode()).hexdigest()


def require_tools() -> None:
    """``UserError`` in one line when espeak-ng or sox is not on the PATH."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"spoken words need {' and '.join(missing)}, not found on the PATH; {INSTALL}")


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """The versions of espeak-ng and sox (part of every render's inputs)."""
    require_tools()
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout
    sox = subprocess.run(["sox", "--version"], capture_output=True, text=True, check=False).stdout
    return {"espeak_ng": " ".join(espeak.split()[:5]), "sox": sox.strip().split()[-1] if sox.strip() else "?"}


def default_cache_dir() -> Path:
    """``$LIFELONG_CACHE/spoken`` (default ``~/.cache/lifelong/spoken``)."""
    root = os.environ.get("LIFELONG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lifelong")
    return Path(root) / "spoken"


def plan(words: Sequence[str], split: str, per_class: int, seed: int, *, accents: Sequence[str],
         speeds: Sequence[int], pitches: Sequence[int], augmentations: Sequence[str]) -> list[Render]:
    """``per_class`` renders of each word, drawn without replacement (seeded) from the split's speakers times
    speeds, pitches and augmentations; ``ConfigError`` when the product is smaller than ``per_class``."""
    variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
    grid = list(itertools.product(accents, variants, speeds, pitches, augmentations))
    if per_class > len(grid):
        raise ConfigError(f"{split}_per_class={per_class} is more than the {len(grid)} distinct {split} renders of a "
                          f"word ({len(accents)} accents x {len(variants)} {split} variants x {len(speeds)} speeds x "
                          f"{len(pitches)} pitches x {len(augmentations)} augmentations)")
    out: list[Render] = []
    for i, word in enumerate(words):
        rng = np.random.default_rng([seed, i, 0 if split == "train" else 1])
        for j in sorted(rng.choice(len(grid), size=per_class, replace=False).tolist()):
            accent, variant, speed, pitch, aug = grid[j]
            out.append(Render(word, accent, variant, int(speed), int(pitch), aug))
    return out


def _render_file(render: Render, path: Path) -> None:
    """Make one WAV with espeak-ng then sox, atomically; ``UserError`` naming the voice if a tool fails."""
    with tempfile.TemporaryDirectory(prefix="lifelong-speech-") as tmp:
        raw = Path(tmp) / "raw.wav"
        cmd = ["espeak-ng", "-w", str(raw), "-v", render.voice, "-s", str(render.speed), "-p", str(render.pitch),
               "--", render.word]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not raw.is_file() or raw.stat().st_size <= 44:
            raise UserError(f"espeak-ng could not render {render.word!r} with voice {render.voice}: "
                            f"{(done.stderr or 'no audio written').strip().splitlines()[0]}")

        def convert(out: Path) -> None:
            sox = ["sox", "-D", "-R", str(raw), "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out),
                   *AUGMENTATIONS[render.augmentation]]
            res = subprocess.run(sox, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise UserError(f"sox could not convert {render.word!r} ({render.voice}, {render.augmentation}): "
                                f"{res.stderr.strip().splitlines()[0] if res.stderr.strip() else 'failed'}")

        atomic_write_with(path, convert)


@contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """Hold the cache's lock, waiting for another process that holds it (parallel runs of ``compare --jobs`` or
    benches share one cache: the second waits while the first renders, then finds the files made)."""
    try:
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot lock the spoken-word cache {root}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(renders: Sequence[Render], cache_dir: Path | str | None = None, workers: int = 2) -> tuple[list[Path], str]:
    """Make the renders missing from the cache (or whose bytes changed) and update the manifest.

    Returns the WAV path of each render, in order, and the manifest digest of this set (sha256 over the sorted
    input hashes and WAV hashes), which changes whenever any input or output does.
    """
    require_tools()
    versions = tool_versions()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the spoken-word cache {root}: {exc.strerror or exc}") from exc
    with _cache_lock(root):
        manifest_path = root / "manifest.json"
        manifest: dict[str, dict] = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())["renders"]
            except (ValueError, KeyError, TypeError):
                manifest = {}  # an unreadable manifest: every file is checked again and rewritten
        keys = [r.key(versions) for r in renders]
        paths = [root / k[:2] / f"{k}.wav" for k in keys]
        todo = {}
        for render, key, path in zip(renders, keys, paths):
            entry = manifest.get(key)
            if not path.is_file() or entry is None or entry.get("wav_sha256") != _sha256(path):
                todo[key] = (render, path)
        if todo:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                list(pool.map(lambda item: _render_file(*item), todo.values()))
            for key, (render, path) in todo.items():
                manifest[key] = {"inputs": render.inputs(versions), "augmentation": render.augmentation,
                                 "wav_sha256": _sha256(path)}
            atomic_write_text(manifest_path, json.dumps({"builder": BUILDER_VERSION, "renders": manifest},
                                                        indent=0, sort_keys=True))
    digest = hashlib.sha256("".join(sorted(f"{k}:{manifest[k]['wav_sha256']}" for k in set(keys))).encode())
    return paths, digest.hexdigest()


def read_wav(path: Path, duration: float) -> np.ndarray:
    """A 16 kHz mono 16-bit WAV as float32, leading silence trimmed, padded or cut to ``duration`` seconds."""
    with wave.open(str(path), "rb") as f:
        if f.getframerate() != SAMPLE_RATE or f.getnchannels() != 1 or f.getsampwidth() != 2:
            raise UserError(f"{path}: not 16 kHz mono 16-bit PCM (rate {f.getframerate()}, {f.getnchannels()} "
                            f"channels, {8 * f.getsampwidth()} bits); delete it to render it again")
        x = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    n = int(round(duration * SAMPLE_RATE))
    loud = np.flatnonzero(np.abs(x) > 0.01 * (np.abs(x).max() if x.size else 0.0))
    x = x[loud[0]:] if loud.size else x
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, x.size)] = x[:n]
    return out


def load(paths: Sequence[Path], duration: float) -> np.ndarray:
    """The waveforms of ``paths`` as one ``[N, samples]`` float32 array."""
    return np.stack([read_wav(p, duration) for p in paths]) if paths else np.zeros((0, int(duration * SAMPLE_RATE)),
                                                                                   np.float32)
