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

``make_gloss_classifier`` is the whole pipeline behind ``lifelong edit train-classifier``: load and split the
glosses, train the classifier (``adapters/lm/text_classifier.py``), find the pool glosses it gets wrong, and write
the classifier folder with its edit set (``edits.jsonl``) and retention set (``trr.jsonl``).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lifelong.benchmarks.wordnet import LEXNAMES, find_wordnet, open_wordnet
from lifelong.platform.errors import UserError


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


def make_gloss_classifier(out: str | os.PathLike, *, wordnet_root: str | os.PathLike | None = None,
                          train_per_class: int = 60, test_per_class: int = 20, pool_per_class: int = 60,
                          epochs: int = 300, seed: int = 0, log: Callable[[str], None] | None = None
                          ) -> dict[str, Any]:
    """Train the gloss classifier and write it to the new folder ``out`` with its edit set (the pool glosses it
    gets wrong, each with its true class as target) and its retention set (test glosses with labels, for TRR);
    returns the training record (also in the folder's ``classifier.json``). Bad sizes and an existing ``out`` are
    one-line ``UserError``s before any work."""
    import torch  # the model half is heavy: loaded only when a classifier is made

    from lifelong.adapters.lm.text_classifier import embed_texts, save_text_classifier, train_text_classifier

    out = Path(out)
    if out.exists():
        raise UserError(f"classifier folder {out} exists; name a new folder")
    sizes = {"train_per_class": train_per_class, "test_per_class": test_per_class, "pool_per_class": pool_per_class,
             "epochs": epochs}
    for name, value in sizes.items():
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    say = log or (lambda message: None)
    t0 = time.perf_counter()
    glosses = load_glosses(wordnet_root)
    splits = split_glosses(glosses, n_train=train_per_class, n_test=test_per_class, n_pool=pool_per_class, seed=seed)
    names = class_names(splits["train"])
    test = [g for g in splits["test"] if g.label in set(names)]
    pool = [g for g in splits["pool"] if g.label in set(names)]
    say(f"WordNet glosses: {len(glosses)} ({len(names)} classes); train {len(splits['train'])}, test {len(test)}, "
        f"edit pool {len(pool)} ({time.perf_counter() - t0:.0f} s)")
    model, tok, record = train_text_classifier([(g.text, g.label) for g in splits["train"]],
                                               [(g.text, g.label) for g in test], names, epochs=epochs, seed=seed,
                                               log=say)
    with torch.no_grad():
        pred = model.head(torch.from_numpy(embed_texts(model, tok, [g.text for g in pool]))).argmax(-1).tolist()
    wrong = [g for g, k in zip(pool, pred) if names[k] != g.label]
    record.update({"pool_accuracy": 1.0 - len(wrong) / max(len(pool), 1), "n_pool": len(pool), "n_edits": len(wrong),
                   "split": {"train_per_class": train_per_class, "test_per_class": test_per_class,
                             "pool_per_class": pool_per_class, "seed": seed},
                   "task": "WordNet 3.0 gloss -> lexicographer file"})
    edits = "".join(json.dumps(r) + "\n" for r in edit_records(wrong, test, seed=seed))
    trr = "".join(json.dumps({"prompt": g.text, "target": g.label}) + "\n" for g in test)
    save_text_classifier(model, tok, out, record, {"edits.jsonl": edits, "trr.jsonl": trr})
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record
