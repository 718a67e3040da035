"""A held-out preference set for reward models, built by a fixed procedure from sources the default branches
do not read (docs/reward.md, "The WordNet held-out set").

Why: the bundled preference set was written together with the SRM branches, and its fact list (what the
``fact-check`` branch reads) covers its own held-out facts, so a score on it is a functional check. This set is
built from WordNet 3.0 relations and from constructed instruction-following constraints; none of the default
branches (``semantic``, ``fact-check``, ``style``, ``fluency``) reads WordNet, and the procedure below was fixed
before any scorer was measured on it. The ``entity-background`` branch does read WordNet, so it is not held out
from this set.

Procedure (``build_heldout``; seed 0; candidates in WordNet's own order, then a seeded sample):

- ``factual-isa`` (60): a common noun x (single-word lemma, the lemma's most frequent noun sense, WordNet
  frequency count >= 10, not a person noun) whose first hypernym h (by synset name) is specific (depth >= 4); a co-hyponym s of
  h (the first by synset name among the other hyponyms of h's hypernym that are single words, not in x's
  hypernym closure). Prompt "What is a x?"; chosen "A x is a kind of h."; rejected "A x is a kind of s.".
- ``factual-part`` (40): a named place x (an instance of a city, capital, port or town whose name has one noun
  sense only) with a part holonym h (the first by synset name) that is a named instance (a country, state, region); s another instance of
  h's class. Prompt "Where is x?"; chosen "x is in h."; rejected "x is in s.".
- instruction following (20 each), after IFEval's constraint families (Zhou et al., 2023), over common nouns x
  chosen as for ``factual-isa``, with hypernym h and gloss g (up to its first ";"); both responses are true,
  only one obeys the prompt:
  ``if-length`` "In at most 8 words, what is a x?": "A x is a kind of h." (8 words or fewer) vs
  "A x is a kind of h: g.";
  ``if-keyword`` "What is a x? Use the word 'h' in your answer.": "A x is a kind of h." vs "A x is g." (g without h);
  ``if-list`` "Name three kinds of x, as a bulleted list.": three single-word hyponyms of x as "- a" lines vs
  "A, b and c.";
  ``if-ending`` "What is a x? End your answer with the exact phrase 'Any other questions?'": "A x is g. Any other
  questions?" vs "A x is g. Let me know if you want more.".

Each record is a plain preference line (``prompt``, ``chosen``, ``rejected``, ``dimension``, ``id``), so
``load_preferences`` and ``lifelong reward eval --data`` read it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from lifelong.benchmarks.preferences import DATA_DIR, PreferencePair, load_preferences
from lifelong.platform.registry import register

HELDOUT_FILE = DATA_DIR / "reward_heldout.jsonl"
SIZES: dict[str, int] = {"factual-isa": 60, "factual-part": 40, "if-length": 20, "if-keyword": 20, "if-list": 20,
                         "if-ending": 20}
ENDING = "Any other questions?"
_PLACE_CLASSES = {"city.n.01", "national_capital.n.01", "state_capital.n.01", "port.n.01", "town.n.01"}
_WORD = re.compile(r"^[a-z]+$")


def _by_name(synsets: Any) -> list[Any]:
    """Related synsets in a fixed order: NLTK's lists of related synsets follow set order, which changes from one
    process to the next (string hashing), so every list the procedure takes a first element of is sorted by name."""
    return sorted(synsets, key=lambda s: str(s.name()))


def _name(s: Any) -> str:
    return s.lemma_names()[0].replace("_", " ")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _count(s: Any) -> int:
    try:
        return sum(lemma.count() for lemma in s.lemmas())
    except (OSError, LookupError):  # a database without cntlist.rev (the tests' small one)
        return 0


def _ancestors(s: Any) -> set[Any]:
    out: set[Any] = set()
    frontier = [s]
    while frontier:
        nxt = [h for f in frontier for h in f.hypernyms() + f.instance_hypernyms() if h not in out]
        out.update(nxt)
        frontier = nxt
    return out


def _common_nouns(wn: Any, min_count: int, min_depth: int) -> Iterator[tuple[Any, Any]]:
    """(x, h): common nouns with a single-word lemma and a specific first hypernym, in WordNet's order."""
    for x in wn.all_synsets("n"):
        word = x.lemma_names()[0]
        if not _WORD.match(word) or x.lexname() == "noun.person" or not x.hypernyms():
            continue
        if wn.synsets(word, pos="n")[0] != x:  # the word's most frequent sense only: what a reader takes it to mean
            continue
        h = _by_name(x.hypernyms())[0]
        if h.min_depth() < min_depth or _count(x) < min_count:
            continue
        yield x, h


def _isa_candidates(wn: Any, min_count: int, min_depth: int) -> list[dict[str, str]]:
    out = []
    for x, h in _common_nouns(wn, min_count, min_depth):
        up = _ancestors(x)
        siblings = [s for g in h.hypernyms() for s in g.hyponyms()
                    if s != h and s not in up and _WORD.match(s.lemma_names()[0]) and _count(s) >= min(1, min_count)
                    and _name(s) != _name(x)]
        if not siblings:
            continue
        s = sorted(siblings, key=lambda t: t.name())[0]
        xw, hw, sw = _name(x), _name(h), _name(s)
        if hw == xw or hw == sw:
            continue
        out.append({"prompt": f"What is {_article(xw)} {xw}?", "chosen": f"{_article(xw).capitalize()} {xw} is a kind of {hw}.",
                    "rejected": f"{_article(xw).capitalize()} {xw} is a kind of {sw}.", "source": x.name()})
    return out


def _part_candidates(wn: Any) -> list[dict[str, str]]:
    out = []
    for x in wn.all_synsets("n"):
        if not {c.name() for c in x.instance_hypernyms()} & _PLACE_CLASSES:
            continue
        if len(wn.synsets(x.lemma_names()[0], pos="n")) != 1:  # "Where is Athens?" must not be ambiguous
            continue
        for h in _by_name(x.part_holonyms()):
            classes = h.instance_hypernyms()
            if not classes:
                continue
            siblings = sorted((s for c in classes for s in c.instance_hyponyms() if s != h and s not in x.part_holonyms()),
                              key=lambda t: t.name())
            if not siblings:
                continue
            xw, hw = _name(x), _name(h)
            sw = _name(siblings[len(xw) % len(siblings)])  # a fixed, spread choice among the siblings
            out.append({"prompt": f"Where is {xw}?", "chosen": f"{xw} is in {hw}.", "rejected": f"{xw} is in {sw}.",
                        "source": x.name()})
            break
    return out


def _gloss(x: Any) -> str:
    return x.definition().split(";")[0].strip()


def _if_candidates(wn: Any, kind: str, min_count: int, min_depth: int) -> list[dict[str, str]]:
    out = []
    for x, h in _common_nouns(wn, min_count, min_depth):
        xw, hw, g = _name(x), _name(h), _gloss(x)
        a, big_a = _article(xw), _article(xw).capitalize()
        short = f"{big_a} {xw} is a kind of {hw}."
        if kind == "if-length":
            long = f"{big_a} {xw} is a kind of {hw}: {g}."
            if len(short.split()) > 8 or len(long.split()) <= 8:
                continue
            out.append({"prompt": f"In at most 8 words, what is {a} {xw}?", "chosen": short, "rejected": long})
        elif kind == "if-keyword":
            if hw.lower() in g.lower() or len(g.split()) < 4:
                continue
            out.append({"prompt": f"What is {a} {xw}? Use the word '{hw}' in your answer.", "chosen": short,
                        "rejected": f"{big_a} {xw} is {g}."})
        elif kind == "if-list":
            kinds = sorted({_name(k) for k in x.hyponyms() if _WORD.match(k.lemma_names()[0])})
            if len(kinds) < 3:
                continue
            picked = kinds[:3]
            out.append({"prompt": f"Name three kinds of {xw}, as a bulleted list.",
                        "chosen": "\n".join(f"- {k}" for k in picked),
                        "rejected": f"{picked[0].capitalize()}, {picked[1]} and {picked[2]}."})
        elif kind == "if-ending":
            if len(g.split()) < 4:
                continue
            out.append({"prompt": f"What is {a} {xw}? End your answer with the exact phrase '{ENDING}'",
                        "chosen": f"{big_a} {xw} is {g}. {ENDING}",
                        "rejected": f"{big_a} {xw} is {g}. Let me know if you want more."})
        if out and "source" not in out[-1]:
            out[-1]["source"] = x.name()
    return out


def build_heldout(wn: Any, seed: int = 0, sizes: dict[str, int] | None = None, min_count: int = 10,
                  min_depth: int = 4) -> list[dict[str, str]]:
    """The held-out records (the module docstring's procedure): each family's candidates in WordNet's order, a
    seeded sample of its size, no noun used twice across families, records ordered by family then sample.
    ``min_count`` and ``min_depth`` are the procedure's frequency and hypernym-depth floors (lower them only for
    a small test database)."""
    sizes = dict(SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    used: set[str] = set()
    records: list[dict[str, str]] = []
    for family, n in sizes.items():
        if family == "factual-isa":
            cands = _isa_candidates(wn, min_count, min_depth)
        elif family == "factual-part":
            cands = _part_candidates(wn)
        else:
            cands = _if_candidates(wn, family, min_count, min_depth)
        cands = [c for c in cands if c["source"] not in used]
        picked = rng.sample(cands, min(n, len(cands)))
        for i, c in enumerate(picked):
            used.add(c["source"])
            records.append({"id": f"{family}-{i:03d}", "dimension": family, "prompt": c["prompt"],
                            "chosen": c["chosen"], "rejected": c["rejected"], "source": c["source"]})
    return records


def write_heldout(records: list[dict[str, str]], path: str | Path = HELDOUT_FILE) -> Path:
    """Write the records as JSON Lines (sorted keys, one record a line): the bytes depend only on the records."""
    from lifelong.platform.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records))
    return path


def heldout_preferences() -> list[PreferencePair]:
    """The bundled WordNet held-out set (``data/reward_heldout.jsonl``)."""
    return load_preferences(HELDOUT_FILE)


@dataclass
class RewardHeldoutConfig:
    """The WordNet held-out set, whole or one family (``dimension``: ``all``, ``factual``, ``instruction``)."""

    dimension: Literal["all", "factual", "instruction"] = "all"


@register("benchmark", "reward-heldout", config=RewardHeldoutConfig, produces="preference-pairs",
          summary="held-out preference pairs from WordNet relations and checkable instructions (180 pairs)")
def reward_heldout(config: RewardHeldoutConfig) -> list[PreferencePair]:
    pairs = heldout_preferences()
    if config.dimension == "factual":
        return [p for p in pairs if (p.dimension or "").startswith("factual")]
    if config.dimension == "instruction":
        return [p for p in pairs if (p.dimension or "").startswith("if-")]
    return pairs
