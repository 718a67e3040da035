"""The WordNet reader on a tiny database written in the real formats, and on Debian's files when installed."""

from __future__ import annotations

import pytest

from lifelong.benchmarks.wordnet import DEFAULT_ROOT, LEXNAMES, find_wordnet, open_wordnet, wordnet_available
from lifelong.platform.errors import UserError
from _wordnet_files import small_wordnet


def test_small_database_reads_relations_and_lexnames(tmp_path):
    wn = open_wordnet(small_wordnet(tmp_path / "wn"))
    dog = wn.synsets("dog")[0]
    assert dog.lemma_names() == ["dog", "domestic_dog"]
    assert dog.lexname() == "noun.animal"
    assert [h.lemma_names()[0] for h in dog.hypernyms()] == ["animal"]
    assert [p.lemma_names()[0] for p in dog.part_meronyms()] == ["tail"]
    assert dog.definition() == "a member of the genus Canis"
    assert len(list(wn.all_synsets("n"))) == 11
    assert wn.synsets("run")[0].lexname() == "verb.motion"


def test_missing_folder_and_missing_file_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="not a folder.*make data"):
        find_wordnet(tmp_path / "absent")
    folder = small_wordnet(tmp_path / "wn")
    (folder / "index.verb").unlink()
    with pytest.raises(UserError, match="missing index.verb"):
        find_wordnet(folder)


def test_lexnames_are_wordnet_30s_45():
    assert len(LEXNAMES) == 45 and LEXNAMES[3] == "noun.Tops" and LEXNAMES[44] == "adj.ppl"


@pytest.mark.skipif(not wordnet_available(DEFAULT_ROOT), reason="Debian's wordnet-base is not installed (make data)")
def test_real_database():
    wn = open_wordnet(DEFAULT_ROOT)
    dog = wn.synset("dog.n.01")
    assert dog.lexname() == "noun.animal"
    assert "canine.n.02" in {h.name() for h in dog.hypernyms()}
    assert len(list(wn.all_synsets("n"))) == 82115
