"""The spoken-word builder and streams: real renders with espeak-ng and sox when they are installed (skipped with
the reason otherwise), the manifest's hashes, disjoint voices, determinism, and the one-line refusal without the
tools."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lifelong.benchmarks import _speech
from lifelong.benchmarks.spoken import DIGIT_WORDS

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="espeak-ng and sox are not installed (make data)")
TINY = {"accents": ["en-us"], "speeds": [160], "pitches": [50], "augmentations": ["none", "reverb"]}


def test_train_and_test_voices_are_disjoint() -> None:
    assert not set(_speech.TRAIN_VARIANTS) & set(_speech.TEST_VARIANTS)
    assert set(_speech.TRAIN_VARIANTS) | set(_speech.TEST_VARIANTS) == set(_speech.VARIANTS)
    grid = {"accents": list(_speech.ACCENTS), "speeds": [140], "pitches": [50], "augmentations": ["none"]}
    train = _speech.plan(DIGIT_WORDS, "train", 20, 3, **grid)
    test = _speech.plan(DIGIT_WORDS, "test", 20, 3, **grid)
    assert {r.variant for r in train} <= set(_speech.TRAIN_VARIANTS)
    assert {r.variant for r in test} <= set(_speech.TEST_VARIANTS)
    assert {r.voice for r in train}.isdisjoint({r.voice for r in test})


def test_the_plan_is_fixed_by_the_seed_and_refuses_too_many() -> None:
    a = _speech.plan(DIGIT_WORDS, "train", 2, 0, **TINY)
    assert a == _speech.plan(DIGIT_WORDS, "train", 2, 0, **TINY)
    assert len(a) == 20 and [r.word for r in a[:2]] == ["zero", "zero"]
    assert a != _speech.plan(DIGIT_WORDS, "train", 2, 1, **TINY)
    with pytest.raises(ValueError, match="more than the"):
        _speech.plan(DIGIT_WORDS, "test", 1000, 0, **TINY)


def test_the_cache_key_hashes_every_input() -> None:
    versions = {"espeak_ng": "x", "sox": "y"}
    r = _speech.Render("seven", "en-us", "m3", 160, 50, "none")
    keys = {r.key(versions), _speech.Render("seven", "en-us", "m3", 160, 51, "none").key(versions),
            _speech.Render("seven", "en-us", "m3", 160, 50, "reverb").key(versions),
            r.key({"espeak_ng": "x2", "sox": "y"})}
    assert len(keys) == 4


@needs_tools
def test_tiny_render_manifest_and_rebuild(tmp_path: Path) -> None:
    renders = _speech.plan(DIGIT_WORDS[:3], "train", 2, 0, **TINY)
    paths, digest = _speech.build(renders, tmp_path, workers=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["renders"]
    assert len(manifest) == len(set(paths)) == 6
    for path in paths:
        entry = manifest[path.stem]
        assert entry["wav_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert hashlib.sha256(json.dumps(entry["inputs"], sort_keys=True).encode()).hexdigest() == path.stem
    waves = _speech.load(paths, 1.0)
    assert waves.shape == (6, 16000) and waves.dtype == np.float32
    assert (np.abs(waves).max(axis=1) > 0.05).all()  # real speech, not silence
    # cached: nothing is rendered again, the same bytes come back
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert _speech.build(renders, tmp_path) == (paths, digest)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    # a file whose bytes changed is rendered again, and comes back as it was (espeak-ng is deterministic)
    original = paths[0].read_bytes()
    paths[0].write_bytes(original[:-200])
    assert _speech.build(renders, tmp_path) == (paths, digest)
    assert paths[0].read_bytes() == original


@needs_tools
def test_spoken_digit_stream_is_deterministic(tmp_path: Path) -> None:
    import lifelong

    options = dict(cache_dir=str(tmp_path), n_experiences=2, train_per_class=2, test_per_class=1, seed=4, **TINY)
    a = lifelong.create("benchmark", "split-spoken-digits", **options)
    b = lifelong.create("benchmark", "split-spoken-digits", **options)
    assert a.input_shape == (1, 16000) and a.n_classes == 10 and a.n_experiences == 2
    assert a.class_order == b.class_order and a.info["manifest_digest"] == b.info["manifest_digest"]
    xa = np.stack([np.asarray(s[0]) for s in a.train_stream[1].dataset])
    xb = np.stack([np.asarray(s[0]) for s in b.train_stream[1].dataset])
    assert xa.shape == (10, 1, 16000) and np.array_equal(xa, xb)
    assert a.names_in_order()[0] == DIGIT_WORDS[a.class_order[0]]
    assert not set(a.info["train_variants"]) & set(a.info["test_variants"])


@needs_tools
def test_frequent_nouns_from_a_tiny_wordnet(tmp_path: Path) -> None:
    from _wordnet_files import Synset, write_wordnet

    from lifelong.benchmarks.spoken import frequent_nouns

    root = tmp_path / "wn"
    write_wordnet(root, [Synset("dog", ["dog"], "noun.animal", "a canine"),
                         Synset("cat", ["cat"], "noun.animal", "a feline"),
                         Synset("two", ["two"], "noun.quantity", "a number")])
    lexid = {"dog": "05", "cat": "05", "two": "23"}
    counts = {"dog": 5, "cat": 2, "two": 9}  # sense key, sense number, tag count (cntlist(5WN)), sorted by key
    (root / "cntlist.rev").write_text("".join(f"{w}%1:{lexid[w]}:00:: 1 {counts[w]}\n" for w in sorted(counts)))
    assert frequent_nouns(2, str(root)) == ["dog", "cat"]


def test_without_espeak_or_sox_one_line_exit_2(cli, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = cli("run", "--strategy", "alade-snn", "--benchmark", "split-spoken-digits", "--out",
                 str(tmp_path / "run"), env={"PATH": str(empty)})
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "espeak-ng and sox" in lines[0] and "make data" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@needs_tools
def test_a_second_build_waits_for_the_cache_lock(tmp_path: Path) -> None:
    import threading

    renders = _speech.plan(DIGIT_WORDS[:1], "test", 1, 0, **TINY)
    done: list[object] = []
    with _speech._cache_lock(tmp_path):
        worker = threading.Thread(target=lambda: done.append(_speech.build(renders, tmp_path)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not done  # waiting, not failing
    worker.join(30)
    assert done and done[0][0][0].is_file()
