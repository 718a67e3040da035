"""Edit data sets: the platform's JSON Lines format, ZsRE (MEND style) and CounterFact (ROME style).

Native format, one edit a line (docs/editing.md)::

    {"prompt": str, "target": str, "paraphrases": [str, ...], "locality": [str, ...], "id": str|int}

Only ``prompt`` and ``target`` are required. ZsRE records (``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans``) and
CounterFact records (``requested_rewrite``, ``paraphrase_prompts``, ``neighborhood_prompts``) are recognised per
record and mapped onto the same fields; files may be JSON Lines or one JSON array (how both are distributed).
The whole file is validated before anything is returned; the first problem raises one ``UserError`` naming the
file, the line (or array index), the field and what is expected. The bundled set
``data/edits-smollm2.jsonl`` holds facts that the default model gets wrong (``bench/edit_data.py check``).

``data/edits-natural.jsonl`` is a second, counterfactual set written by hand (docs/editing.md, "A second
counterfactual set, natural paraphrases"): 64 edits over 16 relations that neither the bundled set (capitals,
authors, painters, official languages, chemical symbols) nor the WordNet set (hypernym, part) holds: composer,
inventor, founder, currency, sport, instrument, headquarters, river, continent, director, architect, landmark's
country, discoverer, birthplace, occupation, a moon's planet. Each target is a false answer; each edit has three
paraphrases written for that edit alone (another word order, a question, a clause, a synonym; no template shared
across edits), and three locality prompts: two near neighbours first (the edit prompt's own wording with another
subject, never edited in the set), one unrelated prompt last. It measures whether a routing threshold chosen on
WordNet templates carries over to natural paraphrases of other relations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from lifelong.benchmarks.jsonl import read_jsonl
from lifelong.editing.editor import MAX_TARGET_CHARS, EditRequest, check_edit_text, check_edit_tokens
from lifelong.platform.errors import UserError

BUNDLED = Path(__file__).resolve().parent / "data" / "edits-smollm2.jsonl"
NATURAL = Path(__file__).resolve().parent / "data" / "edits-natural.jsonl"
FORMATS = ("auto", "jsonl", "zsre", "counterfact")


def bundled_edits_path() -> Path:
    """Path of the bundled edit set for the default model."""
    return BUNDLED


def natural_edits_path() -> Path:
    """Path of the hand-written counterfactual set with natural paraphrases (see the module docstring)."""
    return NATURAL


def _str_list(value: Any, where: str, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: field {field!r} must be a list of strings, got {type(value).__name__}")
    return [check_edit_text(v, field, where) for v in value if v.strip()]


def _required_str(rec: dict, field: str, where: str, *, target: bool = False) -> str:
    if field not in rec:
        raise UserError(f"{where}: missing required field {field!r}")
    value = rec[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: field {field!r} is empty")
    return check_edit_text(value, field, where, max_chars=MAX_TARGET_CHARS if target else None)


def _native(rec: dict, where: str, line: int) -> EditRequest:
    prompt = _required_str(rec, "prompt", where)
    target = _required_str(rec, "target", where, target=True)
    rid = rec.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise UserError(f"{where}: field 'id' must be a string or an integer, got {type(rid).__name__}")
    return EditRequest(prompt=prompt, target=target, paraphrases=_str_list(rec.get("paraphrases"), where, "paraphrases"),
                       locality=_str_list(rec.get("locality"), where, "locality"),
                       id=None if rid is None else str(rid), line=line)


def _zsre(rec: dict, where: str, line: int) -> EditRequest:
    prompt = _required_str(rec, "src", where)
    alt = rec.get("alt")
    if isinstance(alt, list):  # some ZsRE dumps keep a list of alternatives
        alt = alt[0] if alt else ""
    target = _required_str({"alt": alt} if "alt" in rec else rec, "alt", where, target=True)
    loc = rec.get("loc")
    return EditRequest(prompt=prompt, target=target, paraphrases=_str_list(rec.get("rephrase"), where, "rephrase"),
                       locality=_str_list(loc, where, "loc"), id=str(rec["case_id"]) if "case_id" in rec else None,
                       line=line)


def _counterfact(rec: dict, where: str, line: int) -> EditRequest:
    rr = rec.get("requested_rewrite")
    if isinstance(rr, list):
        rr = rr[0] if rr else None
    if not isinstance(rr, dict):
        raise UserError(f"{where}: field 'requested_rewrite' must be an object")
    template = _required_str(rr, "prompt", f"{where} requested_rewrite")
    subject = _required_str(rr, "subject", f"{where} requested_rewrite")
    tn = rr.get("target_new")
    if not isinstance(tn, dict):
        raise UserError(f"{where}: field 'requested_rewrite.target_new' must be an object with 'str'")
    target = _required_str(tn, "str", f"{where} requested_rewrite.target_new", target=True)
    prompt = template.replace("{}", subject) if "{}" in template else template

    def prompts(field: str) -> list[str]:
        items = rec.get(field) or []
        if not isinstance(items, list):
            raise UserError(f"{where}: field {field!r} must be a list")
        out = []
        for it in items:
            if isinstance(it, dict):
                it = it.get("prompt", "")
            if not isinstance(it, str):
                raise UserError(f"{where}: field {field!r} must hold strings")
            if it.strip():
                out.append(check_edit_text(it, field, where))
        return out

    return EditRequest(prompt=prompt, target=target, paraphrases=prompts("paraphrase_prompts"),
                       locality=prompts("neighborhood_prompts"),
                       id=str(rec["case_id"]) if "case_id" in rec else None, line=line)


_PARSERS: dict[str, Callable[[dict, str, int], EditRequest]] = {
    "jsonl": _native, "zsre": _zsre, "counterfact": _counterfact,
}


def detect_format(rec: dict) -> str:
    """Which of the three formats a record is in."""
    if "requested_rewrite" in rec:
        return "counterfact"
    if "src" in rec and "alt" in rec:
        return "zsre"
    return "jsonl"


def load_edits(
    path: str | os.PathLike,
    *,
    fmt: str = "auto",
    tokenizer: Any = None,
    max_tokens: int | None = None,
) -> list[EditRequest]:
    """Read and validate every record of an edit file; raise one ``UserError`` at the first problem.

    Every prompt, target, paraphrase and locality prompt is checked by ``editing.editor.check_edit_text`` (no
    lone surrogate, no control character but tab and newlines, at most ``MAX_PROMPT_CHARS`` / ``MAX_TARGET_CHARS``
    characters). With ``tokenizer``, a prompt plus target longer than ``MAX_EDIT_TOKENS`` or the model's context
    (``max_tokens``) is refused too.
    """
    if fmt not in FORMATS:
        raise UserError(f"edit file format {fmt!r} is not allowed; allowed values: {', '.join(FORMATS)}")
    items = read_jsonl(path, "edit", arrays=True, objects=False)
    out = []
    for where, n, rec in items:
        if not isinstance(rec, dict):
            raise UserError(f"{where}: each edit must be a JSON object, got {type(rec).__name__}")
        kind = detect_format(rec) if fmt == "auto" else fmt
        req = _PARSERS[kind](rec, where, n)
        if tokenizer is not None:
            check_edit_tokens(tokenizer, req.prompt, req.target, where, max_tokens or 0)
        out.append(req)
    return out


def load_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line (blank lines kept out); used by ``edit generate --file``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise UserError(f"prompt file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc})") from None
    prompts = [check_edit_text(line, "prompt", f"{p}:{n}") for n, line in enumerate(text.splitlines(), start=1)
               if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {p} holds no prompts")
    return prompts


def load_retention_set(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """A TRR retention set: JSON Lines of ``{"prompt": str, "target": str (optional)}``, as (prompt, target or
    None); no target means agreement with the unedited model. One-line errors name the file and the line."""
    out: list[tuple[str, str | None]] = []
    for where, _, rec in read_jsonl(path, "retention set"):
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise UserError(f"{where}: a record needs a non-empty string 'prompt'")
        target = rec.get("target")
        if target is not None and not isinstance(target, str):
            raise UserError(f"{where}: field 'target' must be a string")
        check_edit_text(rec["prompt"], "prompt", where)
        out.append((rec["prompt"], target))
    return out
