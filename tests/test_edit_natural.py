"""The hand-written counterfactual set with natural paraphrases (lifelong/benchmarks/data/edits-natural.jsonl):
it loads through the project's loader, has the promised size and relations, and is built as docs/editing.md says
(no paraphrase repeats its prompt, near neighbours are never edited, relations other than the bundled set's)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lifelong.benchmarks.edits import bundled_edits_path, load_edits, natural_edits_path

BUNDLED_RELATIONS = {"capital", "author", "painter", "language", "symbol"}  # the ids of edits-smollm2.jsonl
WORDNET_RELATIONS = {"hypernym", "part"}


def _relation(rid: str) -> str:
    return rid.removeprefix("natural-").rsplit("-", 1)[0]


def test_loads_with_the_promised_size_and_relations() -> None:
    reqs = load_edits(natural_edits_path())
    assert len(reqs) == 64
    relations = Counter(_relation(r.id or "") for r in reqs)
    assert len(relations) == 16 and min(relations.values()) >= 4
    assert not set(relations) & (BUNDLED_RELATIONS | WORDNET_RELATIONS)
    bundled = {(r.id or "").rsplit("-", 1)[0] for r in load_edits(bundled_edits_path())}
    assert bundled == BUNDLED_RELATIONS  # the constant above says what the bundled set holds
    assert len({r.id for r in reqs}) == len(reqs)


def test_paraphrases_and_locality_prompts_are_as_documented() -> None:
    reqs = load_edits(natural_edits_path())
    prompts = {r.prompt for r in reqs}
    assert len(prompts) == len(reqs)
    paraphrases = [p for r in reqs for p in r.paraphrases]
    locality = [p for r in reqs for p in r.locality]
    assert len(set(paraphrases)) == len(paraphrases) and len(set(locality)) == len(locality)
    for r in reqs:
        assert 2 <= len(r.paraphrases) <= 3 and r.prompt not in r.paraphrases
        assert len(r.locality) == 3  # two near neighbours, then one unrelated prompt
        assert not set(r.locality) & (prompts | set(paraphrases))  # never edited, never a paraphrase
        assert r.target.strip() and r.target not in r.prompt
    # written per edit: no two paraphrases of the set begin with the same five words
    starts = Counter(" ".join(p.split()[:5]) for p in paraphrases)
    assert max(starts.values()) == 1


def test_near_neighbours_share_the_edit_prompts_wording() -> None:
    """A near neighbour is the edit prompt's own wording with another subject: it ends in the prompt's last two
    words, and shares more of the prompt's words than the unrelated prompt does."""

    def overlap(a: str, b: str) -> float:
        x, y = set(a.lower().split()), set(b.lower().split())
        return len(x & y) / len(x | y)

    for r in load_edits(natural_edits_path()):
        tail = " ".join(r.prompt.split()[-2:])
        for near in r.locality[:2]:
            assert near.endswith(tail), (r.id, near)
            assert overlap(near, r.prompt) > overlap(r.locality[2], r.prompt), (r.id, near)


def test_file_is_json_lines_of_the_native_format() -> None:
    lines = natural_edits_path().read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    assert all(set(rec) == {"id", "prompt", "target", "paraphrases", "locality"} for rec in recs)


def test_make_set_natural(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lifelong.cli.main import main

    out = tmp_path / "natural.jsonl"
    assert main(["edit", "make-set", "--source", "natural", "--out", str(out)]) == 0
    assert out.read_bytes() == natural_edits_path().read_bytes()
    assert main(["edit", "make-set", "--source", "natural", "--out", str(tmp_path / "n5.jsonl"), "--n", "5"]) == 0
    assert len(load_edits(tmp_path / "n5.jsonl")) == 5
    capsys.readouterr()
    assert main(["edit", "make-set", "--source", "natural", "--split", "dev", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--split applies to --source wordnet only" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
