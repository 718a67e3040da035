"""The classifier setting: ``edit train-classifier`` on a small WordNet in the real file format (MiniLM encoder +
linear head), then SoLA, GRACE and FT-L editing the classifier through ``EditSession`` like a language model:
the edit changes the chosen input's predicted class, SoLA and GRACE route only that input, rollback gives the
unedited logits bit for bit; a target that is not a class is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import _llm_fixtures  # noqa: F401  (offline environment for transformers)
import pytest
import torch
from _wordnet_files import Synset, write_wordnet

from lifelong.adapters.lm.edit_io import edit_layers, model_family
from lifelong.benchmarks.wordnet_glosses import load_glosses, split_glosses
from lifelong.cli.main import main
from lifelong.editing.session import EditSession
from lifelong.platform.errors import UserError

ANIMALS = ["wolf", "otter", "heron", "lizard", "beetle", "salmon", "badger", "falcon", "toad", "moth"]
FOODS = ["bread", "cheese", "soup", "rice", "jam", "pie", "noodle", "butter", "yogurt", "porridge"]
TOOLS = ["hammer", "saw", "drill", "chisel", "wrench", "pliers", "rake", "shovel", "axe", "file"]


def _synsets() -> list[Synset]:
    out = [Synset(f"a{i}", [w], "noun.animal", f"a wild {w} that lives and hunts in the forest number {i}")
           for i, w in enumerate(ANIMALS)]
    out += [Synset(f"f{i}", [w], "noun.food", f"{w}, a dish people cook and eat for dinner, recipe {i}")
            for i, w in enumerate(FOODS)]
    out += [Synset(f"t{i}", [w], "noun.artifact", f"a {w}, a hand tool made of steel for the workshop, model {i}")
            for i, w in enumerate(TOOLS)]
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    root = write_wordnet(tmp_path_factory.mktemp("wn") / "wordnet", _synsets())
    out = tmp_path_factory.mktemp("clf") / "gloss-clf"
    code = main(["edit", "train-classifier", "--out", str(out), "--wordnet-root", str(root), "--train-per-class",
                 "5", "--test-per-class", "2", "--pool-per-class", "3", "--epochs", "100", "--json"])
    assert code == 0
    return out


def test_glosses_split_per_class_without_overlap(tmp_path):
    root = write_wordnet(tmp_path / "wordnet", _synsets())
    glosses = load_glosses(root)
    assert len(glosses) == 30 and {g.label for g in glosses} == {"noun.animal", "noun.food", "noun.artifact"}
    parts = split_glosses(glosses, n_train=5, n_test=2, n_pool=3, seed=0)
    texts = [g.text for part in parts.values() for g in part]
    # per class of 10: test 2 (a fifth), train 4 (at most half of the other 8), pool 3; no gloss in two splits
    assert [len(parts[k]) for k in ("test", "train", "pool")] == [6, 12, 9] and len(set(texts)) == 27
    assert parts == split_glosses(glosses, n_train=5, n_test=2, n_pool=3, seed=0)  # seeded


def test_train_classifier_writes_a_loadable_folder(classifier):
    meta = json.loads((classifier / "classifier.json").read_text())
    assert meta["class_names"] == ["noun.animal", "noun.artifact", "noun.food"]  # WordNet's lexname order
    assert meta["training"]["train_accuracy"] == 1.0  # 12 separable glosses
    trr = [json.loads(line) for line in (classifier / "trr.jsonl").read_text().splitlines()]
    assert len(trr) == 6 and all(r["target"] in meta["class_names"] for r in trr)
    edits = [json.loads(line) for line in (classifier / "edits.jsonl").read_text().splitlines() if line]
    assert len(edits) == meta["training"]["n_edits"]  # the misclassified pool glosses, true class as target
    assert main(["edit", "train-classifier", "--out", str(classifier)]) == 2  # an existing folder is refused


@pytest.mark.parametrize("editor", ["sola", "grace", "ft-l"])
def test_editors_change_a_prediction_and_roll_back_exactly(tmp_path, classifier, editor):
    text, other = "a wild heron that lives and hunts in the forest number 2", "a hammer, a hand tool for the workshop"
    with EditSession(tmp_path / "store", model=str(classifier), editor=editor, device="cpu") as s:
        assert model_family(s.model) == "classifier" and edit_layers(s.model)[0] == "encoder.encoder.layer"
        base = [g["completion"] for g in s.generate([text, other])]
        assert base[0] == "noun.animal"
        inputs, qidx = s.io.prompt_batch([text, other])
        base_logits = s._run(inputs, qidx).clone()
        with pytest.raises(UserError, match="not a class"):
            s.apply(text, "noun.mineral")
        rec = s.apply(text, "noun.food")
        assert s.token_accuracy([text], ["noun.food"]) == [1.0]
        gens = s.generate([text, other])
        assert gens[0]["completion"] == "noun.food"
        if editor != "ft-l":  # routed editors leave the other input's logits untouched, bit for bit
            assert [g["edit_id"] for g in gens] == [rec.id, None]
            assert torch.equal(s._run(inputs, qidx)[1], base_logits[1])
        s.rollback([rec.id])
        assert [g["completion"] for g in s.generate([text, other])] == base
        assert torch.equal(s._run(inputs, qidx), base_logits)


def test_heldout_sentences_are_the_usage_examples(tmp_path):
    from lifelong.benchmarks.wordnet_glosses import heldout_sentences

    synsets = _synsets()
    synsets[0] = Synset("a0", ["wolf"], "noun.animal",
                        'a wild wolf; "the old wolf hunts alone at night"; "wolves howl"')
    root = write_wordnet(tmp_path / "wordnet", synsets)
    assert heldout_sentences(5, root=root) == ["the old wolf hunts alone at night"]  # five words at least
    assert load_glosses(root)[0].text == "a wild wolf"  # NLTK's definition() leaves the examples out


def test_bench_on_the_classifier_takes_its_retention_set(tmp_path, classifier):
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "a wild heron that lives and hunts in the forest number 2", "target": "noun.food",
         "paraphrases": ["heron: a wild heron that lives and hunts in the forest number 2"],
         "locality": ["a hammer, a hand tool for the workshop"]},
        {"prompt": "soup, a dish people cook and eat for dinner, recipe 2", "target": "noun.artifact",
         "locality": ["a wild wolf that lives in the forest"]},
    ]))
    out = tmp_path / "bench"
    code = main(["edit", "bench", "--editor", "sola", "--model", str(classifier), "--file", str(edits), "--every", "1",
                 "--out", str(out), "--device", "cpu", "--json"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    trr = [json.loads(line) for line in (classifier / "trr.jsonl").read_text().splitlines()]
    assert res["model_family"] == "classifier" and res["n_retention"] == len(trr)
    with EditSession(None, model=str(classifier), device="cpu") as base:  # TRR before = the classifier's accuracy
        acc = base.token_accuracy([r["prompt"] for r in trr], [r["target"] for r in trr])
    assert res["trr_before"] == sum(acc) / len(acc)
    assert [r["n_edits"] for r in res["curves"]] == [0, 1, 2] and res["after_stream"]["reliability"] == 1.0
    assert res["after_stream"]["locality"] == 1.0 and res["after_stream"]["perplexity"] is None
