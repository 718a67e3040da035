"""split-wordnet-glosses on a small WordNet written in the real formats, and on Debian's database when installed."""

from __future__ import annotations

import pytest

from lifelong.adapters.lm.text_bytes import decode_texts, encode_texts
from lifelong.benchmarks.split_wordnet_glosses import DEFAULT_CLASSES
from lifelong.benchmarks.wordnet import DEFAULT_ROOT, wordnet_available
from lifelong.platform import registry
from lifelong.platform.config import ConfigError, build_config
from lifelong.platform.errors import UserError
from _wordnet_files import category_wordnet


def make(root, **config):
    base = {"wordnet_root": str(root), "classes": ["animal.n.01", "tool.n.01"], "n_experiences": 2,
            "train_per_class": 4, "test_per_class": 2}
    return registry.create("benchmark", "split-wordnet-glosses", **{**base, **config})


def test_stream_is_balanced_labelled_and_decodes(tmp_path):
    stream = make(category_wordnet(tmp_path / "wn"))
    assert stream.n_classes == 2 and stream.n_experiences == 2
    assert sorted(stream.class_names) == ["animal", "tool"]
    texts, labels = [], []
    for exp in stream.train_stream:
        for x, y, *_ in exp.dataset:
            texts.append(decode_texts(x.unsqueeze(0))[0])
            labels.append(int(y))
    assert len(texts) == 8 and sorted(labels) == [0] * 4 + [1] * 4
    assert "a robot dog" not in texts and "the same words" not in texts  # two categories; a shared gloss
    names = stream.names_in_order()
    for text, y in zip(texts, labels):
        assert ("tool" in text) == (names[y] == "tool")
    test = [decode_texts(x.unsqueeze(0))[0] for exp in stream.test_stream for x, *_ in exp.dataset]
    assert len(test) == 4 and not set(test) & set(texts)


def test_examples_follow_the_gloss_and_instances_count(tmp_path):
    root = category_wordnet(tmp_path / "wn")
    stream = make(root, train_per_class=5, test_per_class=2, n_experiences=1)
    texts = {decode_texts(x.unsqueeze(0))[0] for s in (stream.train_stream, stream.test_stream)
             for exp in s for x, *_ in exp.dataset}
    assert 'a domestic canine; "the dog barked"' in texts
    assert "a famous dog of a story" in texts  # an instance of dog, so an animal
    plain = make(root, train_per_class=5, test_per_class=2, n_experiences=1, examples=False)
    texts = {decode_texts(x.unsqueeze(0))[0] for exp in plain.train_stream for x, *_ in exp.dataset}
    assert not any('"' in t for t in texts)


def test_seed_fixes_order_and_subsets(tmp_path):
    root = category_wordnet(tmp_path / "wn")
    a, b = make(root, seed=3), make(root, seed=3)
    assert a.class_order == b.class_order
    assert all(bool((x1[0] == x2[0]).all()) for x1, x2 in zip(a.train_stream[0].dataset, b.train_stream[0].dataset))


def test_errors_name_the_problem(tmp_path):
    root = category_wordnet(tmp_path / "wn")
    with pytest.raises(ConfigError, match="animal.n.01 has 7 glosses, fewer than"):
        make(root, train_per_class=6, test_per_class=2)
    with pytest.raises(ConfigError, match="'unicorn.n.01' is not a noun synset"):
        make(root, classes=["animal.n.01", "unicorn.n.01"])
    spec = registry.get("benchmark", "split-wordnet-glosses")
    with pytest.raises(ConfigError, match="not a noun synset name"):
        build_config(spec.config, {"wordnet_root": str(root), "classes": ["animal", "tool.n.01"], "n_experiences": 1})
    with pytest.raises(ConfigError, match="both positive"):
        build_config(spec.config, {"wordnet_root": str(root), "classes": ["animal.n.01", "tool.n.01"],
                                   "train_per_class": 0, "n_experiences": 1})
    with pytest.raises(UserError, match="WordNet 3.0 database not found.*make data"):
        build_config(spec.config, {"wordnet_root": str(tmp_path / "absent"), "classes": ["animal.n.01", "tool.n.01"],
                                   "n_experiences": 1})


def test_byte_rows_round_trip():
    texts = ["plain", "café — naïve", ""]
    x = encode_texts(texts, max_bytes=64)
    assert x.dtype.is_floating_point is False and decode_texts(x) == texts
    assert decode_texts(encode_texts(["é" * 10], max_bytes=5)) == ["éé"]  # cut at a character boundary


@pytest.mark.skipif(not wordnet_available(DEFAULT_ROOT), reason="Debian's wordnet-base is not installed (make data)")
def test_real_wordnet_default_classes():
    stream = registry.create("benchmark", "split-wordnet-glosses", train_per_class=2, test_per_class=1)
    assert stream.n_classes == len(DEFAULT_CLASSES) == 60 and stream.n_experiences == 10
    assert "musical instrument" in stream.class_names
    assert stream.info["n_train"] == 120 and stream.info["n_test"] == 60
