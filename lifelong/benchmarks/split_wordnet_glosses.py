"""``split-wordnet-glosses``: a text class-incremental stream from WordNet 3.0's noun hierarchy, offline.

Each class is a noun synset chosen as a category (``bird.n.01``, ``musical_instrument.n.01``, ``city.n.01``,
...); its members are every noun synset below it in the hypernym hierarchy (hypernyms and instance hypernyms,
so the cities, rivers and writers that WordNet lists as instances count). An input is a member's gloss, followed
by its usage examples where WordNet has them (``examples: false`` leaves them out); the label is the category.
Why this and not the 45 lexicographer files (``benchmarks/wordnet_glosses.py``): those are too coarse and
ambiguous for a class-incremental table (a fine-tuned gloss classifier reaches about half), while categories of
the hierarchy are many, can be balanced and are separable.

The procedure, all of it seeded or fixed:

1. ``classes`` (default :data:`DEFAULT_CLASSES`, 60 categories from ten domains: animals, plants, food, health,
   artifacts, activities, culture, science, people, geography; docs/pretrained.md lists them) are resolved
   by NLTK's reader; an unknown name is a one-line error.
2. ``data.noun`` is read once: for every noun synset, its hypernym pointers (``@``, ``@i``) and its gloss.
   A synset belongs to a class when the class's synset is among its ancestors. Synsets under two or more of
   the chosen classes are dropped (WordNet has multiple inheritance; such an input has no single label), and
   so is every text that occurs twice (no text is in two classes or in both splits).
3. Per class, the members are shuffled with the seed; the first ``test_per_class`` go to the test split, the
   next ``train_per_class`` to the training split (every class the same numbers: a balanced stream). A class
   with fewer members than the two together is refused with its count, unless both are 0 (all members: 80 %
   train, 20 % test, unbalanced).
4. The class order comes from the seed (or ``class_order``), the split arithmetic from
   ``incremental/streams.py`` (``n_experiences``, ``initial_classes``, ``uneven``); labels are relabelled in
   class order. Class names (the category's first lemma, ``musical instrument``) are on the stream for
   zero-shot methods.

Inputs travel as UTF-8 byte rows (``adapters/lm/text_bytes.py``), cut at ``max_bytes``; the text models
decode and tokenize them, keeping at most ``max_tokens`` tokens (default 64; 90 % of the default split's
texts are 29 MiniLM tokens or fewer). WordNet is found as ``benchmarks/wordnet.py`` finds it (``wordnet_root``,
``$LIFELONG_WORDNET``, Debian's ``/usr/share/wordnet``), with the same one-line errors when it is absent.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.adapters.lm.text_bytes import encode_texts
from lifelong.benchmarks.wordnet import find_wordnet, open_wordnet
from lifelong.incremental.streams import Stream, build_class_incremental_stream, resolve_class_order, split_class_counts
from lifelong.platform.config import ConfigError
from lifelong.platform.registry import register

#: The 60 categories of the default stream, ten domains of six (see the module docstring for the procedure).
DEFAULT_CLASSES: tuple[str, ...] = (
    # animals
    "bird.n.01", "fish.n.01", "insect.n.01", "dog.n.01", "snake.n.01", "rodent.n.01",
    # plants and fungi
    "tree.n.01", "flower.n.01", "fungus.n.01", "fern.n.01", "grass.n.01", "vine.n.01",
    # food and drink
    "vegetable.n.01", "edible_fruit.n.01", "dish.n.02", "beverage.n.01", "baked_goods.n.01", "sauce.n.01",
    # health and the body
    "medicine.n.02", "disease.n.01", "bacteria.n.01", "bone.n.01", "muscle.n.01", "artery.n.01",
    # artifacts
    "musical_instrument.n.01", "weapon.n.01", "ship.n.01", "garment.n.01", "building.n.01", "furniture.n.01",
    # activities, events and feelings
    "sport.n.01", "game.n.01", "battle.n.01", "crime.n.01", "emotion.n.01", "military_unit.n.01",
    # language and culture
    "natural_language.n.01", "religion.n.01", "monetary_unit.n.01", "musical_composition.n.01", "book.n.01",
    "software.n.01",
    # substances and science
    "chemical_element.n.01", "mineral.n.01", "acid.n.01", "fabric.n.01", "measuring_instrument.n.01",
    "tool.n.01",
    # people
    "scientist.n.01", "writer.n.01", "musician.n.01", "athlete.n.01", "clergyman.n.01", "deity.n.01",
    # geography
    "city.n.01", "country.n.02", "river.n.01", "island.n.01", "geological_formation.n.01", "state.n.01",
)
_HYPERNYM = ("@", "@i")


@dataclass
class SplitWordNetGlossesConfig:
    """Options of ``split-wordnet-glosses``: those of ``split-fashion-mnist`` plus the class list and the text."""

    wordnet_root: str = ""  # '' = $LIFELONG_WORDNET or Debian's /usr/share/wordnet
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    n_experiences: int = 10
    initial_classes: int = 0
    class_order: list[int] = field(default_factory=list)
    shuffle_classes: bool = True
    uneven: str = "error"
    train_per_class: int = 40
    test_per_class: int = 20
    examples: bool = True
    max_bytes: int = 512
    max_tokens: int = 64  # what every text model keeps of an input, in its own tokenizer's tokens
    task_labels: bool = True
    seed: int = 0

    def validate(self) -> None:
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or positive, got {getattr(self, name)}")
        if (self.train_per_class == 0) != (self.test_per_class == 0):
            raise ValueError("train_per_class and test_per_class are both positive (balanced) or both 0 (all)")
        if self.max_tokens < 4:
            raise ValueError(f"max_tokens must be at least 4, got {self.max_tokens}")
        if self.max_bytes < 16:
            raise ValueError(f"max_bytes must be at least 16, got {self.max_bytes}")
        if len(self.classes) < 2:
            raise ValueError(f"classes: give at least two noun synset names (such as 'bird.n.01'), got {self.classes}")
        bad = [c for c in self.classes if not re.fullmatch(r"[^.\s]+\.n\.\d\d", c)]
        if bad:
            raise ValueError(f"classes: {bad[0]!r} is not a noun synset name; allowed: names like 'bird.n.01'")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: a synset is named twice")
        n = len(self.classes)
        resolve_class_order(range(n), self.seed, self.class_order, self.shuffle_classes)
        split_class_counts(n, self.n_experiences, initial_classes=self.initial_classes, uneven=self.uneven)
        find_wordnet(self.wordnet_root or None)


def _gloss_parts(gloss: str) -> tuple[str, list[str]]:
    """(definition, examples) of a data line's gloss, split as NLTK's reader splits them (wndb(5WN))."""
    examples = re.findall(r'"([^"]*)"', gloss)
    definition = re.sub(r'"[^"]*"', "", gloss).strip().strip(";").strip()
    return definition, [e.strip() for e in examples if e.strip()]


def read_nouns(folder: Path) -> tuple[dict[int, list[int]], dict[int, str], dict[int, list[str]]]:
    """From ``data.noun``: each synset's hypernyms (offsets), its definition and its examples, by offset.

    Read straight from the file (wndb(5WN)) rather than through NLTK's reader, which takes minutes to build
    82,115 synset objects on a loaded machine; names are still resolved by NLTK (:func:`resolve_roots`)."""
    parents: dict[int, list[int]] = {}
    definitions: dict[int, str] = {}
    examples: dict[int, list[str]] = {}
    with open(folder / "data.noun", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            columns, gloss = line.split(" | ", 1)
            f = columns.split()
            offset, n_words = int(f[0]), int(f[3], 16)
            at = 4 + 2 * n_words
            n_pointers = int(f[at])
            pointers = [f[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(n_pointers)]
            parents[offset] = [int(p[1]) for p in pointers if p[0] in _HYPERNYM and p[2] == "n"]
            definitions[offset], examples[offset] = _gloss_parts(gloss.strip())
    return parents, definitions, examples


def resolve_roots(names: list[str], root: str | os.PathLike | None) -> tuple[list[int], list[str]]:
    """Offsets and display names (first lemma, underscores as spaces) of the class synsets; an unknown name is a
    ``ConfigError`` naming it."""
    wn = open_wordnet(root)
    offsets, labels = [], []
    for name in names:
        try:
            s = wn.synset(name)
        except Exception:  # NLTK raises WordNetError or ValueError for unknown lemmas and senses
            raise ConfigError(f"split-wordnet-glosses: classes: {name!r} is not a noun synset of the WordNet in "
                              f"{find_wordnet(root)}") from None
        offsets.append(int(s.offset()))
        labels.append(s.lemma_names()[0].replace("_", " "))
    return offsets, labels


def class_members(parents: dict[int, list[int]], roots: list[int]) -> dict[int, list[int]]:
    """For each root, the synsets below it (file order), leaving out those below two or more roots."""
    root_index = {r: i for i, r in enumerate(roots)}
    memo: dict[int, frozenset[int]] = {}

    def under(offset: int) -> frozenset[int]:  # indices of the roots among the proper ancestors (depth < 20)
        if offset not in memo:
            acc: set[int] = set()
            for p in parents.get(offset, []):
                acc |= under(p)
                if p in root_index:
                    acc.add(root_index[p])
            memo[offset] = frozenset(acc)
        return memo[offset]

    members: dict[int, list[int]] = {i: [] for i in range(len(roots))}
    for offset in sorted(parents):
        found = under(offset)
        if len(found) == 1:
            members[next(iter(found))].append(offset)
    return members


def labelled_texts(config: SplitWordNetGlossesConfig) -> tuple[list[list[str]], list[str]]:
    """Per class (in ``config.classes`` order), its member texts in file order, duplicates dropped; and the
    class names."""
    folder = find_wordnet(config.wordnet_root or None)
    roots, names = resolve_roots(config.classes, config.wordnet_root or None)
    parents, definitions, examples = read_nouns(folder)
    members = class_members(parents, roots)
    texts: list[list[str]] = []
    for i in range(len(roots)):
        rows = []
        for o in members[i]:
            text = definitions[o]
            if config.examples and examples[o]:
                text += "; " + "; ".join(f'"{e}"' for e in examples[o])
            rows.append(text)
        texts.append(rows)
    counts: dict[str, int] = {}
    for rows in texts:
        for t in rows:
            counts[t] = counts.get(t, 0) + 1
    return [[t for t in rows if counts[t] == 1 and t] for rows in texts], names


def split_per_class(texts: list[list[str]], config: SplitWordNetGlossesConfig) -> dict[str, tuple[list[str], list[int]]]:
    """``{"train", "test"}``: (texts, class indices), ``test_per_class`` then ``train_per_class`` per class after
    a seeded shuffle (both 0: 20 % / 80 % of every class)."""
    rng = np.random.RandomState(config.seed)
    out: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    need = config.train_per_class + config.test_per_class
    for c, rows in enumerate(texts):
        if need and len(rows) < need:
            raise ConfigError(
                f"split-wordnet-glosses: class {config.classes[c]} has {len(rows)} glosses, fewer than "
                f"train_per_class + test_per_class = {need}; lower them or choose another class")
        if len(rows) < 2:
            raise ConfigError(f"split-wordnet-glosses: class {config.classes[c]} has {len(rows)} glosses; it needs 2")
        order = [rows[i] for i in rng.permutation(len(rows))]
        k_test = config.test_per_class or max(1, len(rows) // 5)
        k_train = config.train_per_class or len(rows) - k_test
        for split, part in (("test", order[:k_test]), ("train", order[k_test:k_test + k_train])):
            out[split][0].extend(part)
            out[split][1].extend([c] * len(part))
    return out


@register("benchmark", "split-wordnet-glosses", config=SplitWordNetGlossesConfig,
          summary="WordNet noun glosses (+ examples) by category of the hierarchy: 60 classes, text, offline")
def split_wordnet_glosses(config: SplitWordNetGlossesConfig) -> Stream:
    """Build the stream; the seed fixes the per-class subsets and the class order."""
    import torch

    texts, names = labelled_texts(config)
    parts = split_per_class(texts, config)
    n = len(config.classes)
    order = resolve_class_order(range(n), config.seed, config.class_order, config.shuffle_classes)
    counts = split_class_counts(n, config.n_experiences, initial_classes=config.initial_classes, uneven=config.uneven)
    data: dict[str, Any] = {}
    for split, (rows, labels) in parts.items():
        data[split] = (encode_texts(rows, config.max_bytes), torch.tensor(labels, dtype=torch.long))
    width = max(data["train"][0].shape[1], data["test"][0].shape[1])
    for split, (x, y) in data.items():  # one width for both splits, so a batch mixing them (replay) collates
        data[split] = (torch.nn.functional.pad(x, (0, width - x.shape[1])), y)
    return build_class_incremental_stream(
        "split-wordnet-glosses",
        train_data=data["train"],
        train_targets=data["train"][1].tolist(),
        test_data=data["test"],
        test_targets=data["test"][1].tolist(),
        class_order=order,
        counts=counts,
        input_shape=(width,),
        class_names=names,
        task_labels=config.task_labels,
        info={
            "dataset": "WordNet 3.0 noun glosses",
            "modality": "text",
            "encoding": "utf-8 bytes, zero-padded",
            "wordnet": str(find_wordnet(config.wordnet_root or None)),
            "classes": list(config.classes),
            "n_train": len(parts["train"][1]),
            "n_test": len(parts["test"][1]),
            "examples": config.examples,
            "max_tokens": config.max_tokens,
        },
    )
