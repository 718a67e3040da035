"""The WordNet counterfactual edit set: built deterministically, split without shared synsets, in the edit format
the loader reads, with template-sharing locality prompts; on a tiny WordNet in the real file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _wordnet_files import Synset, small_wordnet, write_wordnet

from lifelong.benchmarks.edits import load_edits
from lifelong.benchmarks.wordnet import DEFAULT_ROOT, open_wordnet, wordnet_available
from lifelong.benchmarks.wordnet_edits import TEMPLATES, build_wordnet_edits, wordnet_edit_set
from lifelong.platform.errors import UserError

GROUPS = {  # hypernym -> (lexname, hyponyms), all under "entity" via "thing"
    "animal": ("noun.animal", ["dog", "cat", "horse", "cow", "sheep", "goat", "pig", "mouse", "rabbit", "fox"]),
    "food": ("noun.food", ["bread", "cheese", "apple", "rice", "soup", "cake", "butter", "honey", "salad", "pasta"]),
    "tool": ("noun.artifact", ["hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "axe", "file", "pliers"]),
    "plant": ("noun.plant", ["oak", "pine", "fern", "moss", "ivy", "rose", "tulip", "daisy", "lily", "cactus"]),
}


def wordnet_40(folder: Path) -> Path:
    """Four hypernyms under one root, ten one-word hyponyms each, and three part relations (the dog is both a kind
    of animal and, for the test, a part of the pig: one synset with two relations); every pointer has its
    reverse (``~`` hyponym, ``%p`` part meronym), as in the real database."""
    synsets = [Synset("entity", ["entity"], "noun.Tops", "that which exists", pointers=[("~", "thing")]),
               Synset("thing", ["thing"], "noun.Tops", "a separate entity",
                      pointers=[("@", "entity")] + [("~", h) for h in GROUPS])]
    parts = {"dog": "tail", "cat": "paw", "pig": "dog"}
    for hyper, (lex, members) in GROUPS.items():
        synsets.append(Synset(hyper, [hyper], lex, f"a kind of {hyper}",
                              pointers=[("@", "thing")] + [("~", m) for m in members]))
        for m in members:
            pointers = [("@", hyper)] + ([("%p", parts[m])] if m in parts else [])
            if m == "dog":
                pointers.append(("#p", "pig"))
            synsets.append(Synset(m, [m], lex, f"a kind of {hyper} called {m}", pointers=pointers))
    for part, whole in (("tail", "dog"), ("paw", "cat")):
        synsets.append(Synset(part, [part], "noun.body", f"part of a {whole}", pointers=[("#p", whole)]))
    return write_wordnet(folder, synsets)


@pytest.fixture(scope="module")
def wn40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wordnet_40(tmp_path_factory.mktemp("wn40"))


def test_build_is_deterministic_and_disjoint(wn40: Path) -> None:
    sets = build_wordnet_edits(open_wordnet(wn40), min_count=0)
    assert sets["dev"] and sets["test"]
    again = build_wordnet_edits(open_wordnet(wn40), min_count=0)
    assert again == sets
    dev, test = {r["synset"] for r in sets["dev"]}, {r["synset"] for r in sets["test"]}
    assert not dev & test
    assert len({r["split"] for r in sets["dev"] + sets["test"] if r["subject"] == "dog"}) <= 1  # two relations, one split
    edited = {r["subject"] for r in sets["dev"] + sets["test"]}
    for r in sets["dev"] + sets["test"]:
        assert r["target"] != r["true_target"]
        assert len(r["paraphrases"]) == 2 and len(r["locality"]) == 2
        templates = TEMPLATES[r["relation"]]
        # the edit prompt and its two paraphrases are the relation's three templates, each once
        used = sorted(k for k, t in enumerate(templates) for p in [r["prompt"]] + r["paraphrases"]
                      if p.split(r["subject"])[0].strip() == t.split("{s}")[0].format(a="A", al="a").strip()
                      or p.split(r["subject"])[0].strip() == t.split("{s}")[0].format(a="An", al="an").strip())
        assert used == [0, 1, 2], (r, used)
        for loc in r["locality"]:  # same template as the edit prompt, a subject never edited
            head = r["prompt"].split(r["subject"])[1]
            assert loc.endswith(head)
            assert loc.split()[-len(head.split()) - 1] not in edited


def test_counterfactual_is_a_sibling_of_the_true_object(wn40: Path) -> None:
    sets = build_wordnet_edits(open_wordnet(wn40), min_count=0)
    hyper = [r for r in sets["dev"] + sets["test"] if r["relation"] == "hypernym"]
    assert hyper
    for r in hyper:
        assert r["true_target"].strip() == next(h for h, (_, ms) in GROUPS.items() if r["subject"] in ms)
        assert r["target"].strip() in GROUPS and r["target"].strip() != r["true_target"].strip()
        # the near-neighbour locality prompt is about a sibling of the subject (same true object)
        near = r["locality"][0].replace(r["prompt"].split(r["subject"])[1], "").split()[-1]
        assert near in GROUPS[r["true_target"].strip()][1]


def test_cache_files_load_as_edit_files(wn40: Path, tmp_path: Path) -> None:
    path = wordnet_edit_set("dev", root=wn40, min_count=0, cache_dir=tmp_path / "c")
    reqs = load_edits(path)
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [q.prompt for q in reqs] == [r["prompt"] for r in recs]
    assert all(q.paraphrases and q.locality for q in reqs)
    test = load_edits(wordnet_edit_set("test", root=wn40, min_count=0, cache_dir=tmp_path / "c"))
    every = load_edits(wordnet_edit_set("all", root=wn40, min_count=0, cache_dir=tmp_path / "c"))
    assert len(every) == len(reqs) + len(test)
    before = path.stat().st_mtime_ns
    assert wordnet_edit_set("dev", root=wn40, min_count=0, cache_dir=tmp_path / "c").stat().st_mtime_ns == before


def test_bad_input_is_one_user_error(wn40: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="split"):
        wordnet_edit_set("train", root=wn40, cache_dir=tmp_path)
    with pytest.raises(UserError, match="relation"):
        build_wordnet_edits(open_wordnet(wn40), relations=["antonym"])
    with pytest.raises(UserError, match="no edits"):  # the dozen-synset WordNet is too small for a split
        wordnet_edit_set("dev", root=small_wordnet(tmp_path / "small"), min_count=0, cache_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not wordnet_available(DEFAULT_ROOT), reason="Debian's wordnet-base is not installed (make data)")
def test_real_wordnet_poodle() -> None:
    """On WordNet 3.0 the procedure's own example holds (a fast check: one synset, not the whole build)."""
    from lifelong.benchmarks.wordnet_edits import _counterfactual, _true_object

    wn = open_wordnet(DEFAULT_ROOT)
    poodle = wn.synset("poodle.n.01")
    obj = _true_object("hypernym", poodle)
    assert obj.name() == "dog.n.01"
    assert _counterfactual(obj, poodle) in {lemma.name() for s in wn.synset("canine.n.02").hyponyms()
                                            for lemma in s.lemmas()}


def test_make_set_command(wn40: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
    from lifelong.cli.main import main

    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "dev.jsonl"
    args = ["edit", "make-set", "--source", "wordnet", "--split", "dev", "--wordnet-root", str(wn40),
            "--min-count", "0"]
    assert main(args + ["--out", str(out), "--n", "3"]) == 0
    reqs = load_edits(out)
    assert len(reqs) == 3 and all(r.paraphrases and r.locality for r in reqs)
    assert main(args + ["--out", str(tmp_path / "missing" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "y.jsonl"), "--n", "0"]) == 2
    assert not (tmp_path / "y.jsonl").exists()
