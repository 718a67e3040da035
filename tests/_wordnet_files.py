"""A tiny WordNet 3.0 database in the real file formats (wndb(5WN)), for tests that must not need Debian's
``wordnet-base``: data files whose lines start with their own byte offset, index files, empty exception files
and the licence header lines the real files begin with. NLTK's reader opens the folder as it opens the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lifelong.benchmarks.wordnet import LEXNAMES

_POS_FILE = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


@dataclass
class Synset:
    """One synset to write: ``key`` names it for the pointers of others (``("@", "animal")`` = hypernym)."""

    key: str
    lemmas: list[str]
    lexname: str
    gloss: str
    pos: str = "n"
    pointers: list[tuple[str, str]] = field(default_factory=list)


def _line(offset: int, synset: Synset, offsets: dict[str, int], pos_of: dict[str, str]) -> str:
    words = " ".join(f"{lemma.replace(' ', '_')} 0" for lemma in synset.lemmas)
    pointers = " ".join(
        f"{symbol} {offsets[target]:08d} {pos_of[target]} 0000" for symbol, target in synset.pointers
    )
    parts = [f"{offset:08d}", f"{LEXNAMES.index(synset.lexname):02d}", synset.pos, f"{len(synset.lemmas):02x}",
             words, f"{len(synset.pointers):03d}"]
    if pointers:
        parts.append(pointers)
    return " ".join(parts) + f" | {synset.gloss}  \n"


def write_wordnet(folder: Path, synsets: list[Synset]) -> Path:
    """Write ``synsets`` as a WordNet database in ``folder`` (no ``lexnames``: Debian ships none either)."""
    folder.mkdir(parents=True, exist_ok=True)
    pos_of = {s.key: s.pos for s in synsets}
    # Offsets depend on the lengths of earlier lines, which depend on the offsets they point to: every offset is
    # written with 8 digits, so two passes settle them.
    offsets = {s.key: 0 for s in synsets}
    for _ in range(2):
        for pos in _POS_FILE:
            position = len(_HEADER)
            for s in (s for s in synsets if s.pos == pos):
                offsets[s.key] = position
                position += len(_line(position, s, offsets, pos_of).encode())
    for pos, name in _POS_FILE.items():
        members = [s for s in synsets if s.pos == pos]
        (folder / f"data.{name}").write_text(_HEADER + "".join(_line(offsets[s.key], s, offsets, pos_of) for s in members))
        index: dict[str, list[Synset]] = {}
        for s in members:
            for lemma in s.lemmas:
                index.setdefault(lemma.lower().replace(" ", "_"), []).append(s)
        lines = []
        for lemma in sorted(index):
            senses = index[lemma]
            symbols = sorted({symbol for s in senses for symbol, _ in s.pointers})
            lines.append(
                f"{lemma} {pos} {len(senses)} {len(symbols)} {' '.join(symbols) + ' ' if symbols else ''}"
                f"{len(senses)} 0 {' '.join(f'{offsets[s.key]:08d}' for s in senses)}  \n"
            )
        (folder / f"index.{name}").write_text(_HEADER + "".join(lines))
        (folder / f"{name}.exc").write_text("")
    return folder


def small_wordnet(folder: Path) -> Path:
    """A dozen noun synsets with hypernym, part and member relations across four lexicographer files."""
    synsets = [
        Synset("entity", ["entity"], "noun.Tops", "that which is perceived to have its own distinct existence"),
        Synset("animal", ["animal", "beast"], "noun.animal", "a living organism that feeds on organic matter",
               pointers=[("@", "entity")]),
        Synset("dog", ["dog", "domestic dog"], "noun.animal", "a member of the genus Canis",
               pointers=[("@", "animal"), ("%p", "tail")]),
        Synset("cat", ["cat", "true cat"], "noun.animal", "feline mammal usually having thick soft fur",
               pointers=[("@", "animal")]),
        Synset("tail", ["tail"], "noun.body", "the posterior part of the body of a vertebrate",
               pointers=[("#p", "dog")]),
        Synset("food", ["food", "nutrient"], "noun.food", "any substance that can be metabolized",
               pointers=[("@", "entity")]),
        Synset("bread", ["bread", "breadstuff"], "noun.food", "food made from dough of flour or meal",
               pointers=[("@", "food")]),
        Synset("cheese", ["cheese"], "noun.food", "a solid food prepared from the pressed curd of milk",
               pointers=[("@", "food")]),
        Synset("tool", ["tool"], "noun.artifact", "an implement used in the practice of a vocation",
               pointers=[("@", "entity")]),
        Synset("hammer", ["hammer"], "noun.artifact", "a hand tool with a heavy rigid head",
               pointers=[("@", "tool")]),
        Synset("saw", ["saw"], "noun.artifact", "hand tool having a toothed blade for cutting",
               pointers=[("@", "tool")]),
        Synset("run", ["run"], "verb.motion", "move fast by using one's feet", pos="v"),
    ]
    return write_wordnet(folder, synsets)


def category_wordnet(folder):
    """Two categories (animal, tool) with seven members each; one synset under both, two sharing a gloss."""
    s = [Synset("entity", ["entity"], "noun.Tops", "that which exists"),
         Synset("animal", ["animal"], "noun.animal", "a living organism", pointers=[("@", "entity")]),
         Synset("tool", ["tool"], "noun.artifact", "an implement", pointers=[("@", "entity")])]
    animals = ["dog", "cat", "horse", "cow", "sheep", "goat"]
    tools = ["hammer", "saw", "drill", "wrench", "chisel", "file", "plane"]
    for a in animals:
        s.append(Synset(a, [a], "noun.animal", f"a farm or house animal called {a}", pointers=[("@", "animal")]))
    for t in tools:
        s.append(Synset(t, [t], "noun.artifact", f"a hand tool called {t}", pointers=[("@", "tool")]))
    s[3].gloss = 'a domestic canine; "the dog barked"'
    s.append(Synset("rex", ["Rex"], "noun.animal", "a famous dog of a story", pointers=[("@i", "dog")]))
    s.append(Synset("robodog", ["robodog"], "noun.artifact", "a robot dog", pointers=[("@", "dog"), ("@", "tool")]))
    s.append(Synset("twin1", ["twin"], "noun.animal", "the same words", pointers=[("@", "animal")]))
    s.append(Synset("twin2", ["twin"], "noun.artifact", "the same words", pointers=[("@", "tool")]))
    return write_wordnet(folder, s)
