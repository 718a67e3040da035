"""WordNet glosses labelled with their lexicographer file: a real, offline 45-class text classification task for
the classifier setting of lifelong editing (``lifelong edit train-classifier``, ``docs/editing.md``).

Each WordNet 3.0 synset has a gloss (``synset.definition()``) and belongs to one of 45 lexicographer files
(``synset.lexname()``: ``noun.animal``, ``verb.motion``, ``adj.all``, ...). The task: given the gloss, name the
file. It plays the part of SoLA's document classification setting (SCOTUS, a BERT classifier): a classifier is
trained on one split; the edits are held-out inputs it gets *wrong*, each corrected to its true class; the test
retention rate (TRR) is its accuracy on a further held-out split that is never edited.

Splits are per class and seeded: a class's synsets are shuffled, then ``test`` (TRR), ``train`` and the edit
``pool`` are taken in that order (small classes give proportionally less: a fifth at most to test, half of the
rest at most to train). Identical glosses are kept once (the first synset in WordNet's order), so no gloss is
in two splits. An edit record follows the edit-file format (``benchmarks/edits.py``): ``prompt`` the gloss,
``target`` its true class, ``paraphrases`` the gloss introduced by one of the synset's lemmas
(``"lemma: gloss"``, at most two; a surface variant of the same input, never shown to the editor) and
``locality`` three test glosses (unrelated inputs whose prediction must not change).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from lifelong.benchmarks.wordnet import LEXNAMES, find_wordnet, open_wordnet


@dataclass(frozen=True)
class Gloss:
    """One labelled gloss: the text, its lexicographer file, the synset's name and lemmas."""

    text: str
    label: str
    synset: str
    lemmas: tuple[str, ...]


def load_glosses(root: str | os.PathLike | None = None) -> list[Gloss]:
    """Every synset's gloss with its lexicographer file, in WordNet's order, duplicates removed."""
    wn = open_wordnet(root)
    seen: set[str] = set()
    out = []
    for pos in ("n", "v", "a", "r"):
        for s in wn.all_synsets(pos):
            text = s.definition().strip()
            if not text or text in seen:
                continue
            seen.add(text)
            out.append(Gloss(text, s.lexname(), s.name(), tuple(n.replace("_", " ") for n in s.lemma_names())))
    return out


def split_glosses(glosses: Sequence[Gloss], *, n_train: int = 60, n_test: int = 20, n_pool: int = 60, seed: int = 0
                  ) -> dict[str, list[Gloss]]:
    """``{"train", "test", "pool"}``: per class, shuffled with ``seed``, ``test`` first (at most a fifth of the
    class), then ``train`` (at most half of the rest), then the edit ``pool`` (see the module docstring)."""
    by_class: dict[str, list[Gloss]] = {}
    for g in glosses:
        by_class.setdefault(g.label, []).append(g)
    rng = random.Random(seed)
    out: dict[str, list[Gloss]] = {"train": [], "test": [], "pool": []}
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        k_test = min(n_test, len(items) // 5)
        k_train = min(n_train, (len(items) - k_test) // 2)
        k_pool = min(n_pool, len(items) - k_test - k_train)
        out["test"] += items[:k_test]
        out["train"] += items[k_test : k_test + k_train]
        out["pool"] += items[k_test + k_train : k_test + k_train + k_pool]
    return out


def class_names(glosses: Sequence[Gloss]) -> list[str]:
    """The classes present, in WordNet's lexicographer-file order."""
    present = {g.label for g in glosses}
    return [name for name in LEXNAMES if name in present]


def edit_records(wrong: Sequence[Gloss], test: Sequence[Gloss], *, n_locality: int = 3, seed: int = 0
                 ) -> list[dict[str, Any]]:
    """Edit-file records for glosses the classifier gets wrong: target the true class, lemma-introduced
    paraphrases, ``n_locality`` test glosses (seeded) as locality prompts."""
    rng = random.Random(seed)
    pool = [g.text for g in test]
    recs = []
    for g in wrong:
        paras = [f"{lemma}: {g.text}" for lemma in g.lemmas[:2]]
        loc = rng.sample(pool, min(n_locality, len(pool))) if pool else []
        recs.append({"id": g.synset, "prompt": g.text, "target": g.label, "paraphrases": paras, "locality": loc})
    return recs


def heldout_sentences(n: int = 200, *, root: str | os.PathLike | None = None, seed: int = 0) -> list[str]:
    """``n`` WordNet noun usage examples of at least five words (real English sentences), seeded: held-out text for
    the perplexity of an edited language model. Read straight from ``data.noun`` (wndb(5WN): the gloss follows
    ``" | "``, its examples are the double-quoted parts, as NLTK's ``synset.examples()`` splits them) because
    walking every synset through NLTK's reader takes minutes on a loaded machine; the result is the same text."""
    path = find_wordnet(root) / "data.noun"
    sents: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:  # the licence header lines
                continue
            gloss = line.split(" | ", 1)[1]
            sents += [e.strip() for e in re.findall(r'"([^"]+)"', gloss) if len(e.split()) >= 5]
    random.Random(seed).shuffle(sents)
    return sents[:n]
