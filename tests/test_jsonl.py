"""``benchmarks/jsonl.read_jsonl``: the one JSON Lines reader of the data families, and the same one-line errors
from every loader built on it (edits, retention sets, preference pairs, facts, RM-Bench/JudgeBench files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.benchmarks.edits import load_edits, load_retention_set
from lifelong.benchmarks.jsonl import read_jsonl
from lifelong.benchmarks.preferences import load_facts, load_preferences
from lifelong.benchmarks.reward_formats import load_pairs
from lifelong.platform.errors import UserError

LOADERS = {"edit": load_edits, "retention set": load_retention_set, "preference": load_preferences,
           "facts": load_facts, "preference (formats)": load_pairs}


def test_records_carry_where_they_were(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"x": 1}\n\n{"x": 2}\n')
    assert read_jsonl(f, "thing") == [(f"{f}:1", 1, {"x": 1}), (f"{f}:3", 3, {"x": 2})]
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps([{"x": 1}, {"x": 2}]))
    assert [r.where for r in read_jsonl(arr, "thing", arrays=True)] == [f"{arr} record 1", f"{arr} record 2"]
    with pytest.raises(UserError, match=r"b\.json:1: expected a JSON object, got list"):  # without arrays: one line
        read_jsonl(arr, "thing")


@pytest.mark.parametrize("content, message", [
    (None, "thing file {f} does not exist"),
    (b"", "thing file {f} holds no records"),
    (b"\n  \n", "thing file {f} holds no records"),
    (b'{"x": 1}\n{"x": \n', "{f}:2: invalid JSON: Expecting value (column 7)"),
    (b'{"x": 1}\n[1]\n', "{f}:2: expected a JSON object, got list"),
    (b'{"x": "\xff"}\n', "{f}: not UTF-8 text"),
])
def test_each_problem_is_one_line_naming_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    f = tmp_path / "t.jsonl"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(UserError) as exc:
        read_jsonl(f, "thing")
    text = str(exc.value)
    assert "\n" not in text and text.startswith(message.format(f=f)), text


@pytest.mark.parametrize("loader", LOADERS.values(), ids=list(LOADERS))
def test_every_loader_reports_a_bad_line_the_same_way(tmp_path: Path, loader) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "p", "target": "t", "chosen": "c", "rejected": "r"}\n{oops\n')
    with pytest.raises(UserError, match=rf"^{f}:2: invalid JSON: "):
        loader(f)
    with pytest.raises(UserError, match=r"file .*missing\.jsonl does not exist$"):
        loader(tmp_path / "missing.jsonl")


def test_a_line_over_the_limit_and_nesting_past_the_parser_are_one_line(tmp_path, monkeypatch):
    from lifelong.benchmarks import jsonl

    monkeypatch.setattr(jsonl, "MAX_LINE_CHARS", 1000)  # the real limit is 1 MiB; the rule is the same
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "' + "x" * 2000 + '"}\n')
    with pytest.raises(UserError, match=r"long.jsonl:1: a line of 2014 characters; lines of at most 1000"):
        jsonl.read_jsonl(long, "edit")
    monkeypatch.setattr(jsonl, "MAX_LINE_CHARS", 1 << 20)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"deep.jsonl:1: JSON nested too deeply"):
        jsonl.read_jsonl(deep, "preference")
