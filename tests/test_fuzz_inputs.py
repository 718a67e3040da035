"""Hypothesis fuzzing of the files and arguments the tool reads: every reader either returns its data or refuses
with one ``UserError`` (one line on stderr, exit 2 at the CLI); no other exception escapes, whatever the bytes.
The example budget is small here (the suite stays fast); ``bench/fuzz_inputs.py`` runs the same properties with a
large budget and prints the counts that docs/reliability.md reports."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.benchmarks._idx import read_idx
from lifelong.benchmarks.edits import load_edits
from lifelong.benchmarks.preferences import load_preferences
from lifelong.benchmarks.reward_formats import load_pairs
from lifelong.incremental.run import resolve_config
from lifelong.platform.config import parse_overrides
from lifelong.platform.errors import UserError

BUDGET = int(os.environ.get("LIFELONG_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=BUDGET, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["prompt", "target", "chosen", "rejected", "question", "answer", "subject", "src", "alt",
                     "paraphrases", "locality", "id", "messages", "role", "content", "x", ""]) | st.text(max_size=8),
    inner, max_size=5), max_leaves=12)
# a line of a JSON Lines file: valid JSON of any shape, text, bytes that are not UTF-8, or nesting past the parser
_line = st.one_of(_json.map(json.dumps), st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                  st.integers(1, 3).map(lambda k: "[" * (10_000 * k) + "]" * (10_000 * k)),
                  st.just('{"prompt": "a\\ud800", "target": "b"}'))


def _write_lines(path: Path, lines: list[str], raw_tail: bytes = b"") -> Path:
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw_tail)
    return path


def _refuses_cleanly(read, path: Path) -> None:
    try:
        read(path)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


@FUZZ
@given(lines=st.lists(_line, min_size=1, max_size=6), tail=st.binary(max_size=8))
def test_jsonl_readers_return_or_refuse_in_one_line(tmp_path_factory, lines, tail) -> None:
    folder = tmp_path_factory.mktemp("jsonl")
    path = _write_lines(folder / "data.jsonl", lines, tail)
    for read in (load_edits, load_preferences, load_pairs):
        _refuses_cleanly(read, path)


@FUZZ
@given(body=st.binary(max_size=64), header=st.tuples(st.integers(0, 3), st.integers(0, 16), st.integers(0, 5),
                                                     st.lists(st.integers(0, 2**32 - 1), max_size=5)),
       gz=st.booleans())
def test_idx_reader_returns_or_refuses_in_one_line(tmp_path_factory, body, header, gz) -> None:
    zero, type_code, ndim, dims = header
    raw = bytes([0, zero, type_code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + body
    path = tmp_path_factory.mktemp("idx") / "file"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    for ndim_expected in (1, 3):
        _refuses_cleanly(lambda p: read_idx(p, ndim=ndim_expected), path)


_keys = st.sampled_from(["epochs", "lr", "batch_size", "model", "n_experiences", "class_order", "seed", "uneven",
                         "mem_size", "components", "kd.alpha", "strategy_config.lr", "benchmark_config.x", "loggers",
                         "precision", "optimizer", "train_per_class", "initial_classes", "nope", ""])
_values = st.one_of(st.sampled_from(["0", "-1", "1e309", "nan", "[1,2", "{a: b}", "null", "[]", "cnn-28", "fp8",
                                     "yes", "'x'", "[9,9,9,9,9]", "!!python/object:os.system", "1" * 400]),
                    st.text(max_size=30))


@FUZZ
@given(sets=st.lists(st.tuples(_keys, _values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4),
       strategy=st.sampled_from(["naive", "replay", "der", "nosuch", ""]))
def test_run_config_from_any_set_values_resolves_or_refuses(sets, strategy) -> None:
    try:
        resolve_config(strategy=strategy or None, benchmark="split-digits", overrides=parse_overrides(sets))
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), _json.map(lambda v: json.dumps(v)),
                      st.sampled_from(["strategy: [", "!!python/object/apply:os.system ['true']", "a: &x [*x]",
                                       "strategy: naive\nstrategy_config: {epochs: -3}", "\x00", "- - - -"])))
def test_config_files_of_any_text_resolve_or_refuse(tmp_path_factory, text) -> None:
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        resolve_config(config_file=path)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)
