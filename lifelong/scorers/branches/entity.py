"""The ``entity-background`` branch: background facts from WordNet on the entities of the prompt.

The SRM paper (Liu et al., arXiv 2509.25361) has an "entity background" side branch: a generative model that
writes what is known about the entities a prompt mentions, so the reward model can judge a response against it.
No such model or entity knowledge base is available offline; WordNet 3.0 is (Debian's ``wordnet-base``, read
with NLTK through ``lifelong.benchmarks.wordnet``). This branch fills the gap by rule:

- entities: the noun lemmas of the prompt (then the response, up to ``max_entities``), found by the longest
  WordNet noun (1 to 3 words, WordNet's own ``morphy`` lemmatisation) at each position, skipping function words;
  each is given one sense by a simplified Lesk overlap with the prompt and response (ties go to WordNet's most
  frequent sense, its first);
- text (``entity_background``): per entity its gloss, hypernyms ("is a"), part/member holonyms ("part of") and
  meronyms ("has parts"); this is also what the generative ``sbm-entity`` branch learns to write;
- features: how many entities the prompt has, the share of them whose WordNet neighbourhood (synonyms,
  hypernyms, holonyms, meronyms) the response mentions, and the response's relation claims between two nouns of
  one sentence ("X is a Y", "X is part of / in Y", "X has Y"): supported when WordNet holds the relation for some
  pair of their senses, contradicted when it does not but Y is a co-hyponym of something X truly is or belongs
  to (the typical wrong answer: a sibling swapped in, "Canberra is in New Zealand").

Departures: rules, not a trained generator; WordNet knows common nouns and well-known proper nouns, not
current events; the claim check sees only relations WordNet encodes (is-a, part/member of).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from lifelong.benchmarks.wordnet import find_wordnet, open_wordnet
from lifelong.platform.errors import UserError
from lifelong.platform.registry import register
from lifelong.scorers.branches.base import Branch, BranchOutput, Item, sentences, words

# Words that WordNet lists as nouns but that, in a question or an answer, are almost never the entity.
_STOP = frozenset("""
a an the of in on at to for from by with and or but nor is are was were be been being am it its this that these
those what which who whom whose when where why how do does did done doing not no yes i you he she we they me him
her us them my your his our their there here as than then so if about into over under up down out can could
would should will shall may might must also very more most some any each every all one two three four five give
tell name write answer question please say said use used like just only much many well thing things way kind
type sort part lot something anything everything nothing someone anyone people person make made get got let
know think sure maybe perhaps really actually called known best good great first last other same such own
put take go come see want need find keep set try help hope thanks thank answer
""".split())
_GENERIC = frozenset({"entity", "physical_entity", "abstraction", "object", "whole", "thing"})
_ISA_CUE = re.compile(r"\b(is|are|was|were)\s+(a|an|the|one)\b|\b(kind|type|sort|species|form|example)\s+of\b")
_PART_CUE = re.compile(r"\b(part|member|capital|region|city|province|state)\s+of\b|\b(in|within|inside|located|lies|belongs)\b")
_HAS_CUE = re.compile(r"\b(has|have|had|contains?|includes?|consists?)\b")
_LOCK = threading.Lock()  # NLTK's reader loads its files lazily; one thread at a time inside it


@dataclass
class EntityConfig:
    """``wordnet_root``: the WordNet 3.0 folder (default ``$LIFELONG_WORDNET``, else Debian's /usr/share/wordnet);
    ``max_entities``: how many entities the background covers."""

    wordnet_root: str | None = None
    max_entities: int = 3

    def validate(self) -> None:
        if self.max_entities < 1:
            raise ValueError(f"max_entities must be >= 1, got {self.max_entities}")
        try:  # a missing database is refused when the scorer is created, not after its other branches ran
            find_wordnet(self.wordnet_root)
        except UserError as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class Entity:
    """A noun found in a text: its surface words, the WordNet lemma and the chosen sense (an NLTK Synset)."""

    surface: str
    lemma: str
    synset: Any


def _noun_senses(wn: Any, gram: str) -> list[Any]:
    return list(wn.synsets(gram, pos="n"))


def _lesk(senses: Sequence[Any], context: set[str]) -> Any:
    """The sense whose gloss and hypernyms share most words with ``context``; ties: the most frequent (first)."""
    best, best_score = senses[0], -1
    own = {w for s in senses for n in s.lemma_names() for w in words(n.replace("_", " "))}
    context = context - own  # the word itself in a gloss says nothing about the sense
    for s in senses[:8]:
        text = s.definition() + " " + " ".join(n for h in s.hypernyms() + s.instance_hypernyms() for n in h.lemma_names())
        score = len(context & set(words(text.replace("_", " "))))
        if score > best_score:
            best, best_score = s, score
    return best


def find_entities(wn: Any, text: str, context: str = "", limit: int | None = None) -> list[Entity]:
    """The WordNet nouns of ``text`` in order of appearance (longest match first, each lemma once), each with the
    sense that best fits ``text`` + ``context``."""
    toks = words(text)
    ctx = (set(toks) | set(words(context))) - _STOP
    found: list[Entity] = []
    seen: set[str] = set()
    i = 0
    while i < len(toks) and (limit is None or len(found) < limit):
        hit = None
        for n in (3, 2, 1):
            gram = toks[i:i + n]
            if len(gram) < n or gram[0] in _STOP or gram[-1] in _STOP or gram[0].isdigit():
                continue
            if n == 1 and len(gram[0]) < 3:
                continue
            senses = _noun_senses(wn, "_".join(gram))
            if senses:
                hit = (n, gram, senses)
                break
        if hit is None:
            i += 1
            continue
        n, gram, senses = hit
        sense = _lesk(senses, ctx)
        lemma = sense.lemma_names()[0].lower()
        if lemma not in seen and sense.name().split(".")[0] not in _GENERIC:
            seen.add(lemma)
            found.append(Entity(" ".join(gram), lemma, sense))
        i += n
    return found


def _names(synsets: Iterable[Any], k: int = 3) -> list[str]:
    out: list[str] = []
    for s in synsets:
        name = s.lemma_names()[0].replace("_", " ")
        if name not in out:
            out.append(name)
        if len(out) >= k:
            break
    return out


# Related synsets in a fixed order (by name): sets of synsets iterate in hash order, which changes per process.
def _hypernyms(s: Any) -> list[Any]:
    return sorted(list(s.hypernyms()) + list(s.instance_hypernyms()), key=_key)


def _holonyms(s: Any) -> list[Any]:
    return sorted(list(s.part_holonyms()) + list(s.member_holonyms()) + list(s.substance_holonyms()), key=_key)


def _meronyms(s: Any) -> list[Any]:
    return sorted(list(s.part_meronyms()) + list(s.member_meronyms()) + list(s.substance_meronyms()), key=_key)


def _key(s: Any) -> str:
    return str(s.name())


def describe(entity: Entity, gloss_chars: int = 140) -> str:
    """One entity's background: gloss, "is a", "part of" and "has parts" from WordNet."""
    s = entity.synset
    gloss = s.definition()
    if len(gloss) > gloss_chars:
        gloss = gloss[:gloss_chars].rsplit(" ", 1)[0] + " ..."
    parts = [f"{entity.lemma.replace('_', ' ')}: {gloss}"]
    for label, related in (("is a", _hypernyms(s)), ("part of", _holonyms(s)), ("has parts", _meronyms(s))):
        names = _names(related)
        if names:
            parts.append(f"{label} {', '.join(names)}")
    return "; ".join(parts)


def entity_background(prompt: str, response: str = "", *, wordnet: Any = None, wordnet_root: str | None = None,
                      max_entities: int = 3) -> str:
    """The background text on the entities of ``prompt`` (then ``response``): what the ``entity-background``
    branch writes and the generative ``sbm-entity`` branch learns to write. ``""`` when WordNet knows none."""
    wn = wordnet if wordnet is not None else open_wordnet(wordnet_root)
    with _LOCK:
        ents = find_entities(wn, prompt, response, limit=max_entities)
        if len(ents) < max_entities:
            have = {e.lemma for e in ents}
            ents += [e for e in find_entities(wn, response, prompt) if e.lemma not in have][:max_entities - len(ents)]
        return " | ".join(describe(e) for e in ents)


def _closure(s: Any, step: Any, depth: int = 8) -> set[Any]:
    out: set[Any] = set()
    frontier = [s]
    for _ in range(depth):
        nxt = [r for f in frontier for r in step(f) if r not in out]
        if not nxt:
            break
        out.update(nxt)
        frontier = nxt
    return out


def _related(wn: Any, a: Entity, b: Entity) -> tuple[bool, bool]:
    """(WordNet holds a is-a / part-of / has relation between some senses of a and b, b is a co-hyponym of
    something a is or belongs to)."""
    senses_a = [a.synset] + [s for s in _noun_senses(wn, a.lemma)[:4] if s != a.synset]  # WordNet's sense order
    senses_b = set(_noun_senses(wn, b.lemma)[:4]) | {b.synset}
    truth: set[Any] = set()
    for sa in senses_a:
        up = _closure(sa, _hypernyms)
        whole = _closure(sa, _holonyms, 4)
        for h in sorted(up, key=_key)[:40]:
            whole |= set(_holonyms(h))
        truth |= up | whole | _closure(sa, _meronyms, 2)
    if truth & senses_b:
        return True, False
    # co-hyponyms under a specific parent only: under "entity" or "object" everything would be a sibling
    parents = {p for s in truth for p in _hypernyms(s) if p.name().split(".")[0] not in _GENERIC and p.min_depth() >= 2}
    sibling = any(set(_hypernyms(sb)) & parents for sb in senses_b)
    return False, sibling


def _claims(wn: Any, response: str, context: str) -> tuple[int, int, list[str]]:
    supported = contradicted = 0
    notes: list[str] = []
    for sent in sentences(response):
        ents = find_entities(wn, sent, context)
        low = sent.lower()
        for i, a in enumerate(ents):
            for b in ents[i + 1:]:
                # the cue must sit between the two mentions
                start = low.find(a.surface.split()[-1])
                end = low.find(b.surface.split()[0], start + 1)
                between = low[start:end] if 0 <= start < end else ""
                if not (_ISA_CUE.search(between) or _PART_CUE.search(between) or _HAS_CUE.search(between)):
                    continue
                ok, sibling = _related(wn, a, b)
                if ok:
                    supported += 1
                    notes.append(f"'{a.surface} ... {b.surface}' agrees with WordNet")
                elif sibling:
                    contradicted += 1
                    notes.append(f"'{a.surface} ... {b.surface}' disagrees with WordNet")
    return supported, contradicted, notes


def _neighbourhood(s: Any) -> set[str]:
    rel = ([s] + _hypernyms(s) + _holonyms(s) + _meronyms(s) + sorted(s.hyponyms(), key=_key)[:20]
           + sorted(s.instance_hyponyms(), key=_key)[:20])
    return {w for r in rel for n in r.lemma_names() for w in words(n.replace("_", " ")) if w not in _STOP}


@register("branch", "entity-background", config=EntityConfig,
          summary="WordNet background on the prompt's entities (gloss, is-a, part-of) and whether the response agrees")
class EntityBackgroundBranch(Branch):
    """Background facts from WordNet on the prompt's entities, and the response's agreement with them."""

    name = "entity-background"
    feature_names = ("log_entities", "related_mention_share", "supported_claims", "contradicted_claims")
    version = "2"  # 2: related synsets in a fixed order (outputs of 1 could depend on the process's string hashing)

    def __init__(self, config: EntityConfig | None = None) -> None:
        self.config = config or EntityConfig()

    def fingerprint(self) -> str:
        root = find_wordnet(self.config.wordnet_root).resolve()
        return f"{super().fingerprint()}/{root}/{self.config.max_entities}"

    def compute(self, items: Sequence[Item]) -> list[BranchOutput]:
        wn = open_wordnet(self.config.wordnet_root)
        out = []
        for prompt, response in items:
            with _LOCK:
                ents = find_entities(wn, prompt, response, limit=self.config.max_entities)
                resp_words = set(words(response))
                related = [e for e in ents if _neighbourhood(e.synset) & resp_words]
                supported, contradicted, notes = _claims(wn, response, prompt)
            background = entity_background(prompt, response, wordnet=wn, max_entities=self.config.max_entities)
            share = len(related) / len(ents) if ents else 0.0
            feats = (math.log1p(len(ents)), share, float(supported), float(contradicted))
            text = "entity background: " + (background or "no WordNet entity found")
            if notes:
                text += " || claims: " + "; ".join(notes[:3])
            out.append(BranchOutput(feats, text))
        return out
