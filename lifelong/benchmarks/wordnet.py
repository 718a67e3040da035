"""WordNet 3.0 read offline: Debian's ``wordnet-base`` database files opened with NLTK's reader.

Why here: the WordNet-derived sets (counterfactual edits, the gloss classifier, the reward model's entity
background) all start from the same database, and there is no download at run time. Debian installs the
database in ``/usr/share/wordnet`` (``make data``) but not the small ``lexnames`` file that NLTK's reader opens
first; its 45 lines are fixed by WordNet 3.0 (the lexnames(5WN) manual page), so the reader below serves them
from memory when the folder has none. Nothing is written next to the database.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import IO, Any

from lifelong.platform.errors import UserError

DEFAULT_ROOT = Path("/usr/share/wordnet")

# (number, name, syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb), as lexnames(5WN) lists them.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# What NLTK's reader opens when it starts: one data and one index file per part of speech and the exceptions.
REQUIRED_FILES: tuple[str, ...] = tuple(
    f"{kind}.{pos}" for pos in ("noun", "verb", "adj", "adv") for kind in ("data", "index")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))


def lexnames_text() -> str:
    """The ``lexnames`` file of WordNet 3.0: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(
        f"{number:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for number, name in enumerate(LEXNAMES)
    )


def find_wordnet(root: str | os.PathLike | None = None) -> Path:
    """The WordNet folder: ``root``, else ``$LIFELONG_WORDNET``, else Debian's ``/usr/share/wordnet``. A missing
    folder or file is a ``UserError`` that says which file and how to install the database."""
    chosen = root if root is not None else os.environ.get("LIFELONG_WORDNET") or DEFAULT_ROOT
    folder = Path(chosen)
    if not folder.is_dir():
        raise UserError(
            f"WordNet 3.0 database not found: {folder} is not a folder (install Debian's wordnet-base with "
            "`make data`, or give the folder holding data.noun, index.noun, ... as wordnet_root)"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"WordNet 3.0 database in {folder} is incomplete: missing {', '.join(missing)} "
            "(reinstall Debian's wordnet-base with `make data`)"
        )
    return folder


def wordnet_available(root: str | os.PathLike | None = None) -> bool:
    """True when :func:`find_wordnet` would succeed (for tests that skip without the real database)."""
    try:
        find_wordnet(root)
    except UserError:
        return False
    return True


@functools.lru_cache(maxsize=4)
def _open(folder: str) -> Any:
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # NLTK (3.9 and later) opens corpus files only under the folders of its data path: authorise this one.
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)

    class _Reader(WordNetCorpusReader):
        def open(self, file: str) -> IO[str]:  # noqa: A003 - NLTK's name
            if file == "lexnames" and not (Path(folder) / "lexnames").is_file():
                return io.StringIO(lexnames_text())
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            # A mapping between WordNet versions serves only the multilingual (OMW) data, which is not used here;
            # NLTK would look for its own downloaded "wordnet" corpus to build it.
            return None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _Reader(folder, omw_reader=None)


def open_wordnet(root: str | os.PathLike | None = None) -> Any:
    """NLTK's ``WordNetCorpusReader`` on the WordNet folder (see :func:`find_wordnet`); one reader per folder
    per process, since opening parses every index file (about 2 s on the real database)."""
    return _open(str(find_wordnet(root).resolve()))
