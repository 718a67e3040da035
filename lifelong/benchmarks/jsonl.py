"""One reader for the JSON Lines files the data families take: edit files, TRR retention sets, preference pairs,
facts, RM-Bench and JudgeBench files.

Each record comes back with where it was (``PATH:LINE``, or ``PATH record N`` in a file that is one JSON array), so
every later check can name the place in one line. The errors of the reading itself are the same for every family:
a missing file, text that is not UTF-8, a line that is not JSON, a record that is not an object (where asked), an
empty file; each one ``UserError`` line naming the file (and the line). What a record must hold is the caller's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from lifelong.platform.errors import UserError

#: the largest file read whole (the bundled sets are a few hundred KB)
MAX_FILE_BYTES = 256 << 20
#: the longest line (one record): far above any prompt, response or edit, far below what stalls the parser (a
#: 50 MB line held ``reward eval`` for minutes)
MAX_LINE_CHARS = 1 << 20


class JsonRecord(NamedTuple):
    """One record of a JSON Lines (or JSON array) file: where it is, its line (or 1-based index), its value."""

    where: str
    line: int
    value: Any


def read_jsonl(path: str | os.PathLike, what: str, *, arrays: bool = False, objects: bool = True
               ) -> list[JsonRecord]:
    """Every record of the JSON Lines file ``path`` (blank lines skipped); ``what`` names the kind of file in the
    errors ("edit", "preference", ...). ``arrays``: a file whose text starts with ``[`` is one JSON array of
    records (how ZsRE, CounterFact and RM-Bench are distributed). ``objects``: a record that is not a JSON object
    is refused here (False: the caller says what it expected)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise UserError(f"{what} file {p} does not exist")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{p}: {size} bytes; {what} files of at most {MAX_FILE_BYTES} bytes are read")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise UserError(f"{what} file {p} cannot be read ({exc.strerror or exc})") from None
    records: list[JsonRecord] = []
    if arrays and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise UserError(f"{p}: JSON nested too deeply to read") from None
        if not isinstance(rows, list):
            raise UserError(f"{p}: a JSON array of records was expected")
        records = [JsonRecord(f"{p} record {i + 1}", i + 1, row) for i, row in enumerate(rows)]
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_CHARS:
                raise UserError(f"{p}:{n}: a line of {len(line)} characters; lines of at most {MAX_LINE_CHARS} are read")
            try:
                records.append(JsonRecord(f"{p}:{n}", n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{n}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise UserError(f"{p}:{n}: JSON nested too deeply to read") from None
    if not records:
        raise UserError(f"{what} file {p} holds no records")
    if objects:
        for rec in records:
            if not isinstance(rec.value, dict):
                raise UserError(f"{rec.where}: expected a JSON object, got {type(rec.value).__name__}")
    return records
