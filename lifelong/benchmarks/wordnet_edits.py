"""Counterfactual edits built from WordNet 3.0: hundreds of edits with paraphrases and template-sharing locality
prompts, split into a development set (to choose a routing key and threshold) and a test set (to report on).

Why: the bundled edit set (77 facts) is too small to choose a routing key on one part and report on another, and
its locality prompts do not share the edit's wording, so a loose routing threshold goes unseen. The procedure
below is deterministic (no random numbers; every choice is a sort or a SHA-1 of a synset name), so the same
database gives the same files on every machine.

Procedure (``build_wordnet_edits``):

1. **Subjects**: noun synsets whose first lemma is one lower-case word, whose synset is that word's first (most
   frequent) noun sense, so the word in a prompt means that synset, in a lexicographer file of concrete things
   (``SUBJECT_LEXNAMES``: animals, artifacts, food, plants, body parts, people, places, objects, substances), and
   whose first lemma occurs at least ``min_count`` times in WordNet's semantic concordance (``cntlist.rev``).
2. **Relations** (the true object ``o`` of subject ``s``), each with three templates (``TEMPLATES``):
   ``hypernym`` (``s``'s only hypernym: "A poodle is a kind of" -> " dog") and ``part`` (``s``'s first part
   holonym: "A wheel is part of the" -> " car"). ``o``'s name is its first one-word lemma.
3. **Counterfactual target**: a sibling of ``o``: a hyponym of ``o``'s first hypernym that is not ``o``, whose
   name is one word, differs from ``s`` and ``o`` and is not a lemma of ``s`` or ``o``; the one with the highest
   concordance count (ties: the name); where ``o`` has several hypernyms, the first by synset name.
   "A poodle is a kind of" -> " wolf" (dog and wolf are both canines).
4. **Split**: the subject synsets are ordered by SHA-1 of their name; position ``i mod 10`` in 0-2 goes to
   ``dev``, 3-5 to ``test``, 6-9 to the **locality pool** (never edited), with all of a synset's relations, so
   dev, test and the pool are disjoint in synsets.
5. **Prompts**: the edit prompt uses one of its relation's three templates (by SHA-1 of ``relation:synset``), the two
   paraphrases use the other two. The two locality prompts use the *edit prompt's own template* with subjects
   from the pool: a near neighbour (a pool subject with the same true object, e.g. "A beagle is a kind of",
   else the next pool subject of the relation by hash) and one more pool subject of the relation (by hash). A
   router that matches the template instead of the subject routes them, so a loose threshold shows.

Records are the platform's JSON Lines edit format (``benchmarks/edits.py``) plus provenance fields that the
loader ignores (``relation``, ``subject``, ``synset``, ``true_target``, ``split``). ``wordnet_edit_set`` builds the
files on first use into ``$LIFELONG_CACHE/wordnet-edits/`` (default ``~/.cache/lifelong``), keyed by the SHA-256
of the database files it reads and ``BUILD_VERSION``; ``lifelong edit make-set --source wordnet`` writes them
where asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from lifelong.platform.atomic import atomic_write_text, file_sha256
from lifelong.platform.errors import UserError

#: bump when the procedure changes: the cache key includes it
BUILD_VERSION = 2
SPLITS = ("dev", "test", "all")
RELATIONS = ("hypernym", "part")
SUBJECT_LEXNAMES = frozenset({
    "noun.animal", "noun.artifact", "noun.food", "noun.plant", "noun.body", "noun.person", "noun.location",
    "noun.object", "noun.substance",
})
#: per relation, three templates; ``{a}`` is "A"/"An" for the subject, ``{s}`` the subject's name
TEMPLATES: dict[str, tuple[str, ...]] = {
    "hypernym": ("{a} {s} is a kind of", "The {s} is a type of", "Broadly speaking, {al} {s} is one kind of"),
    "part": ("{a} {s} is part of the", "The {s} is a component of the", "Strictly speaking, {al} {s} belongs to the"),
}
_WORD = re.compile(r"^[a-z]+$")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _one_word(synset: Any) -> str | None:
    """The synset's first lemma that is one lower-case word, else None."""
    for lemma in synset.lemmas():
        if _WORD.match(lemma.name()):
            return lemma.name()
    return None


def _count(lemma: Any) -> int:
    """Concordance count of a lemma; 0 where the database has no ``cntlist.rev`` (the tests' tiny WordNet)."""
    try:
        return int(lemma.count())
    except (OSError, LookupError, ValueError):
        return 0


def _subject_name(wn: Any, synset: Any, min_count: int) -> str | None:
    first = synset.lemmas()[0]
    name = first.name()
    if not _WORD.match(name) or synset.lexname() not in SUBJECT_LEXNAMES:
        return None
    senses = wn.synsets(name, pos="n")
    if not senses or senses[0] != synset:
        return None
    if min_count > 0 and _count(first) < min_count:
        return None
    return name


def _true_object(relation: str, synset: Any) -> Any:
    if relation == "hypernym":
        hyper = synset.hypernyms()
        return hyper[0] if len(hyper) == 1 else None
    holo = synset.part_holonyms()
    return sorted(holo, key=lambda s: s.name())[0] if holo else None


def _counterfactual(obj: Any, subject: Any) -> str | None:
    """The most frequent one-word sibling of ``obj`` (same first hypernym) usable as a false object."""
    parents = sorted(obj.hypernyms() or obj.instance_hypernyms(), key=lambda s: s.name())
    if not parents:
        return None
    banned = {lemma.name().lower() for lemma in subject.lemmas()} | {lemma.name().lower() for lemma in obj.lemmas()}
    best: tuple[int, str] | None = None
    for sib in parents[0].hyponyms():
        if sib == obj or sib == subject:
            continue
        name = _one_word(sib)
        if name is None or name in banned:
            continue
        score = (-sum(_count(lemma) for lemma in sib.lemmas()), name)
        if best is None or score < best:
            best = score
    return best[1] if best else None


def _prompt(relation: str, template: int, subject: str) -> str:
    art = _article(subject)
    return TEMPLATES[relation][template].format(a=art.capitalize(), al=art, s=subject)


def build_wordnet_edits(wn: Any, *, min_count: int = 1, relations: Iterable[str] = RELATIONS
                        ) -> dict[str, list[dict[str, Any]]]:
    """The dev and test edit records built from the WordNet reader ``wn`` (see the module docstring)."""
    relations = tuple(relations)
    for rel in relations:
        if rel not in RELATIONS:
            raise UserError(f"WordNet edit relation {rel!r} is not known; allowed values: {', '.join(RELATIONS)}")
    facts: list[dict[str, Any]] = []
    for synset in wn.all_synsets("n"):
        name = _subject_name(wn, synset, min_count)
        if name is None:
            continue
        for rel in relations:
            obj = _true_object(rel, synset)
            if obj is None:
                continue
            obj_name = _one_word(obj)
            if obj_name is None or obj_name == name:
                continue
            false = _counterfactual(obj, synset)
            if false is None or false == name:
                continue
            facts.append({"relation": rel, "subject": name, "synset": synset.name(), "true_target": obj_name,
                          "false": false, "hash": _digest(f"{rel}:{synset.name()}")})
    # the split is by synset (a synset with two relations lands in one part), so no synset is both edited in one
    # split and edited or used as a locality subject in another
    synsets = sorted({f["synset"] for f in facts}, key=lambda name: _digest(name))
    part_of = {name: "dev" if i % 10 < 3 else "test" if i % 10 < 6 else "pool" for i, name in enumerate(synsets)}
    facts.sort(key=lambda f: f["hash"])
    parts: dict[str, list[dict[str, Any]]] = {"dev": [], "test": [], "pool": []}
    for f in facts:
        parts[part_of[f["synset"]]].append(f)
    pool_by_rel: dict[str, list[dict[str, Any]]] = {}
    pool_by_obj: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in parts["pool"]:
        pool_by_rel.setdefault(f["relation"], []).append(f)
        pool_by_obj.setdefault((f["relation"], f["true_target"]), []).append(f)
    out: dict[str, list[dict[str, Any]]] = {"dev": [], "test": []}
    for split in ("dev", "test"):
        for f in parts[split]:
            rel, pool = f["relation"], pool_by_rel.get(f["relation"], [])
            if len(pool) < 2:
                continue
            t = int(f["hash"][:8], 16) % 3
            h = int(f["hash"][8:16], 16)
            near = pool_by_obj.get((rel, f["true_target"]))
            first = near[h % len(near)] if near else pool[h % len(pool)]
            rest = [p for p in pool if p is not first]
            second = rest[int(f["hash"][16:24], 16) % len(rest)]
            out[split].append({
                "id": f"wn-{rel}-{f['synset']}",
                "prompt": _prompt(rel, t, f["subject"]),
                "target": " " + f["false"],
                "paraphrases": [_prompt(rel, k, f["subject"]) for k in range(3) if k != t],
                "locality": [_prompt(rel, t, first["subject"]), _prompt(rel, t, second["subject"])],
                "relation": rel, "subject": f["subject"], "synset": f["synset"], "true_target": " " + f["true_target"],
                "split": split,
            })
    return out


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    """Records as JSON Lines (the format ``edit apply --file`` and ``edit eval --file`` read)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def _cache_root() -> Path:
    env = os.environ.get("LIFELONG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lifelong"


def wordnet_edit_set(split: str = "test", *, root: str | os.PathLike | None = None, min_count: int = 1,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the JSON Lines file of ``split`` (``dev``, ``test`` or ``all``), built on first use into the cache
    (a folder per database content, build version and ``min_count``); later calls only hash the database."""
    from lifelong.benchmarks.wordnet import find_wordnet, open_wordnet

    if split not in SPLITS:
        raise UserError(f"WordNet edit split {split!r} is not known; allowed values: {', '.join(SPLITS)}")
    if min_count < 0:
        raise UserError(f"min_count must be >= 0, got {min_count}")
    folder = find_wordnet(root)
    h = hashlib.sha256(f"v{BUILD_VERSION} min_count={min_count}".encode())
    for name in ("data.noun", "index.noun", "cntlist.rev"):
        path = folder / name
        h.update(f"{name}:{file_sha256(path) if path.is_file() else '-'}".encode())
    out = Path(cache_dir) if cache_dir is not None else _cache_root() / "wordnet-edits" / h.hexdigest()[:16]
    target = out / f"{split}.jsonl"
    if target.is_file():
        return target
    sets = build_wordnet_edits(open_wordnet(folder), min_count=min_count)
    if not sets["dev"] or not sets["test"]:
        raise UserError(f"the WordNet database in {folder} gives no edits (dev {len(sets['dev'])}, "
                        f"test {len(sets['test'])}); min_count={min_count} may be too high")
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("dev", sets["dev"]), ("test", sets["test"]), ("all", sets["dev"] + sets["test"])):
        atomic_write_text(out / f"{name}.jsonl", to_jsonl(recs))
    return target
