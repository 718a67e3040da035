"""Regression tests of the hostile-input review, editing and reward side (issue 18, ``docs/reliability.md``): a
store on a read-only file system, a store file with flipped bytes, reward models replaced atomically and checked at
load, out-of-range ids, lone surrogates, control characters and length limits before any model work, an offline
hub id, ``edit eval`` over a damaged edit, and property-based tests (random edit files, random byte flips)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import one_line, run
from _llm_fixtures import TINY_SOLA, tiny_llama  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.benchmarks.edits import load_edits
from lifelong.cli.main import main
from lifelong.editing import store as store_mod
from lifelong.editing.editor import MAX_PROMPT_CHARS
from lifelong.editing.store import ADAPTER_DIR, DB_NAME, CorruptEditError, EditStore, StoreError
from lifelong.platform.atomic import file_sha256
from lifelong.platform.errors import UserError

IDENT = {"name": "m", "weights_sha256": "a" * 64}




def make_store(path: Path, n: int = 3) -> Path:
    """A store of ``n`` sola-like edits written without a model (tensors and keys only)."""
    with EditStore.open(path, model_identity=IDENT) as s:
        for i in range(n):
            s.add_edit(f"prompt {i}", f"target {i}", editor="sola", editor_config={"rank": 4}, metric="ip",
                       tensors={"w": torch.full((4, 4), float(i))}, key=np.full(8, i + 1.0, np.float32))
    return path


def snapshot(path: Path) -> tuple:
    """Everything a reader of the store sees (rows, spec, model, router) as plain values."""
    with EditStore.open(path, create=False, readonly=True) as s:
        rows = [(r.id, r.uid, r.prompt, r.target, r.status, r.editor, r.editor_config, r.extra, r.layer,
                 None if r.key is None else r.key.tobytes(), r.adapter_file, r.adapter_sha256) for r in s.all_edits()]
        return rows, s.editor_spec(), s.model_identity(), s.metric, sorted(s.router().ids())


@pytest.fixture(scope="module")
def applied_store(tmp_path_factory, tiny_llama):  # noqa: F811
    """A store with one edit applied through the CLI to the tiny model."""
    path = tmp_path_factory.mktemp("applied") / "store"
    assert main(["edit", "apply", "--store", str(path), "--model", str(tiny_llama), "--prompt",
                 "The capital of Australia is", "--target", " Canberra", *TINY_SOLA, "--json"]) == 0
    return path


# ------------------------------------------------------------------------------------ 1. read-only file system
_RO_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from lifelong.cli.main import main
    store, model = sys.argv[1], sys.argv[2]
    out = {}
    for name, argv in {
        "list": ["edit", "list", "--store", store, "--json"],
        "generate": ["edit", "generate", "--store", store, "--model", model, "--prompt", "The capital of Australia is",
                     "--max-new-tokens", "2", "--json"],
        "rollback": ["edit", "rollback", "--store", store, "1"],
        "apply": ["edit", "apply", "--store", store, "--model", model, "--prompt", "a b", "--target", " c"],
    }.items():
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            rc = main(argv)
        out[name] = [rc, o.getvalue(), e.getvalue()]
    print(json.dumps(out))
""")


def _check_read_only_outcome(out: dict, store: Path) -> None:
    rc, stdout, _ = out["list"]
    assert rc == 0 and [r["prompt"] for r in json.loads(stdout)] == ["The capital of Australia is"]
    rc, stdout, err = out["generate"]
    assert rc == 0, err
    assert json.loads(stdout)["edit_id"] == 1
    for name in ("rollback", "apply"):
        rc, _, err = out[name]
        assert rc == 2, (name, err)
        assert "cannot be written" in one_line(err) and str(store) in err


def test_a_store_on_a_read_only_file_system(tmp_path, applied_store, tiny_llama, capsys,  # noqa: F811
                                            monkeypatch):
    """list and generate read it, apply and rollback refuse in one line. Exercised for real in a read-only bind
    mount (``unshare -rm``: a user and mount namespace) where the kernel allows it, else by simulating what SQLite
    and the OS do on one (writable opens fail, ``mode=ro`` cannot make its ``-shm``, the folder is not writable)."""
    store = tmp_path / "ro"
    shutil.copytree(applied_store, store)
    before = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    script = tmp_path / "ro.py"
    script.write_text(_RO_SCRIPT)
    mount = (f"mount --bind {store} {store} && mount -o remount,bind,ro {store} && "
             f"{sys.executable} {script} {store} {tiny_llama}")
    unshare = shutil.which("unshare")
    proc = subprocess.run([unshare, "-rm", "sh", "-c", mount], capture_output=True, text=True,
                          timeout=300) if unshare else None
    if proc is not None and proc.returncode == 0:  # the mount was allowed: the real thing was exercised
        _check_read_only_outcome(json.loads(proc.stdout.splitlines()[-1]), store)
        assert {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
        return

    real_connect, real_access = sqlite3.connect, os.access

    def ro_connect(database, *args, uri=False, **kwargs):
        if str(store) in str(database) and "immutable=1" not in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, uri=uri, **kwargs)

    monkeypatch.setattr(store_mod.sqlite3, "connect", ro_connect)
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False if str(store) in str(p) else real_access(p, mode))
    out = {}
    for name, argv in {
        "list": ["edit", "list", "--store", str(store), "--json"],
        "generate": ["edit", "generate", "--store", str(store), "--model", str(tiny_llama), "--prompt",
                     "The capital of Australia is", "--max-new-tokens", "2", "--json"],
        "rollback": ["edit", "rollback", "--store", str(store), "1"],
        "apply": ["edit", "apply", "--store", str(store), "--model", str(tiny_llama), "--prompt", "a b",
                  "--target", " c"],
    }.items():
        out[name] = list(run(capsys, *argv))
    _check_read_only_outcome(out, store)
    assert {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------------ 2. flipped bytes in SQLite
def test_a_store_file_with_flipped_bytes_is_one_line_naming_the_file(tmp_path, capsys):
    page = tmp_path / "page"  # a b-tree page header overwritten: PRAGMA quick_check (or SQLite itself) refuses it
    make_store(page)
    raw = bytearray((page / DB_NAME).read_bytes())
    raw[4096:4096 + 16] = b"\xff" * 16
    (page / DB_NAME).write_bytes(bytes(raw))
    row = tmp_path / "row"  # one character of a prompt changed: the row's checksum refuses it
    make_store(row)
    raw = bytearray((row / DB_NAME).read_bytes())
    at = raw.index(b"prompt 1")
    raw[at] = ord("P")
    (row / DB_NAME).write_bytes(bytes(raw))
    meta = tmp_path / "meta"  # the editor config changed ({"rank": 4} -> {"rank": 5}): the meta seal refuses it
    make_store(meta)
    raw = bytearray((meta / DB_NAME).read_bytes())
    at = raw.index(b'"rank": 4}, "name"') if b'"rank": 4}, "name"' in raw else raw.index(b'"rank": 4')
    raw[at + 8] = ord("5")
    (meta / DB_NAME).write_bytes(bytes(raw))
    for path, why in ((page, "corrupted"), (row, "edit 2 does not match its checksum"),
                      (meta, "meta data does not match its checksum")):
        for argv in (["edit", "list", "--store", str(path)], ["edit", "rollback", "--store", str(path), "2"],
                     ["edit", "generate", "--store", str(path), "--model", "/nonexistent/model", "--prompt", "x"]
                     )[: 2 if path == row else 3]:  # a row is read after the model loads: list and rollback
            rc, out, err = run(capsys, *argv)
            line = one_line(err)
            assert rc == 2 and str(path / DB_NAME) in line and why in line, (argv, err)


# ------------------------------------------------------------------------------------ 3. reward models
def _rm(seed: int):
    from lifelong.platform.registry import create
    from lifelong.scorers.reward_model import RewardHead

    rm = create("scorer", "scalar-rm", cache_dir=":memory:", device="cpu", hidden=4)
    torch.manual_seed(seed)
    rm.head = RewardHead(8, {}, 4, 0.0)
    return rm


def _weights(folder: Path) -> dict:
    from lifelong.scorers import srm

    return {k: v.clone() for k, v in srm.ScalarRewardModel.load(folder).head.state_dict().items()}


def test_reward_model_replaced_in_one_step_even_when_killed_between_renames(tmp_path, monkeypatch):
    from lifelong.platform import atomic

    out = tmp_path / "rm"
    old, new = _rm(0), _rm(1)
    old.save(out)
    w_old = _weights(out)
    new.save(out)  # over an existing model: renameat2(RENAME_EXCHANGE) where the kernel has it
    w_new = _weights(out)
    assert not all(torch.equal(w_old[k], w_new[k]) for k in w_old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # the old model is gone, no temporary folder

    # without the exchange: two renames; the second one fails (a full disk): the previous model is put back
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_replace, failed = os.replace, []

    def fails_into_place(src, dst):
        if Path(dst) == out and not failed:  # the new folder into place, after the old one was put aside
            failed.append(dst)
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fails_into_place)
    with pytest.raises(OSError):
        old.save(out)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert failed and all(torch.equal(v, w_new[k]) for k, v in _weights(out).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]

    # a process killed between the two renames leaves the previous model whole, aside (tests/test_atomic_folder.py
    # kills one for real): the next load puts it back
    os.replace(out, tmp_path / ".rm.old")
    assert all(torch.equal(v, w_new[k]) for k, v in _weights(out).items())
    assert not (tmp_path / ".rm.old").exists()
    old.save(out)  # the two-rename path to the end
    assert all(torch.equal(v, w_old[k]) for k, v in _weights(out).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_reward_head_checksum_nan_and_truncation_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "rm"
    _rm(0).save(out)
    head = out / "head.safetensors"
    good = head.read_bytes()
    rng = np.random.default_rng(0)
    flipped = bytearray(good)
    for i in rng.choice(len(good), 64, replace=False):
        flipped[i] ^= 0xFF
    cases = {"flipped": bytes(flipped), "truncated": good[: len(good) // 2]}
    for name, data in cases.items():
        head.write_bytes(data)
        rc, _, err = run(capsys, "reward", "score", "--model", str(out), "--prompt", "p", "--response", "r")
        assert rc == 2 and "does not match the checksum" in one_line(err) and str(head) in err, name
    head.write_bytes(good)
    state = load_file(str(head))  # a NaN weight, with a matching checksum: the finiteness check refuses it
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(head), metadata={"scorer": "scalar-rm"})
    meta = json.loads((out / "config.json").read_text())
    meta["head_sha256"] = file_sha256(head)
    (out / "config.json").write_text(json.dumps(meta))
    rc, _, err = run(capsys, "reward", "score", "--model", str(out), "--prompt", "p", "--response", "r")
    assert rc == 2 and "non-finite weights" in one_line(err)
    del meta["head_sha256"]  # a folder from before the checksum (read with --allow-unverified): a truncated head
    (out / "config.json").write_text(json.dumps(meta))  # is still one line
    head.write_bytes(good[:40])
    rc, _, err = run(capsys, "reward", "score", "--model", str(out), "--prompt", "p", "--response", "r",
                     "--allow-unverified")
    assert rc == 2 and "cannot load the reward head" in one_line(err)
    bad = _rm(0)
    with torch.no_grad():
        next(bad.head.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(UserError, match="non-finite weights"):
        bad.save(tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------ 4. and 5. input checks
def test_out_of_range_ids_surrogates_controls_lengths_and_bench_out(tmp_path, capsys, tiny_llama):  # noqa: F811
    store = make_store(tmp_path / "s", n=1)
    for i in ("18446744073709551616", "-1", "0"):
        rc, _, err = run(capsys, "edit", "rollback", "--store", str(store), i)
        assert rc == 2 and f"no edit with id {i}" in one_line(err)
    new = tmp_path / "new"
    t0 = time.perf_counter()
    for prompt, why in (("x\ud800y", "lone UTF-16 surrogate (U+D800) at character 2"),
                        ("a\x00b", "control character U+0000 at character 2"),
                        ("a" * 20_000, f"20000 characters long; the limit is {MAX_PROMPT_CHARS}")):
        rc, _, err = run(capsys, "edit", "apply", "--store", str(new), "--model", str(tiny_llama),
                         "--prompt", prompt, "--target", " t")
        assert rc == 2 and "--prompt" in err and why in one_line(err)
    assert time.perf_counter() - t0 < 5 and not new.exists()  # before the model loads: no store folder
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "target": "t"}) + "\n"
                 + json.dumps({"prompt": "p", "target": "t", "paraphrases": ["fine", "bad\x07"]}) + "\n")
    rc, _, err = run(capsys, "edit", "apply", "--store", str(new), "--file", str(f))
    assert rc == 2 and f"{f}:2: field 'paraphrases' holds the control character U+0007" in one_line(err)
    f.write_text('{"prompt": "p\\ud83d", "target": "t"}\n')  # a JSON escape of half a surrogate pair
    with pytest.raises(UserError, match=r":1: field 'prompt' holds a lone UTF-16 surrogate \(U\+D83D\)"):
        load_edits(f)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    rc, _, err = run(capsys, "edit", "bench", "--editor", "sola", "--out", str(afile))
    assert rc == 2 and "exists and is not a folder" in one_line(err)


def test_a_refused_first_apply_leaves_no_store_and_the_context_is_checked(tmp_path, capsys,
                                                                          tiny_llama):  # noqa: F811
    new = tmp_path / "new"
    rc, _, err = run(capsys, "edit", "apply", "--store", str(new), "--model", str(tiny_llama), "--prompt", "p q",
                     "--target", " r", "--set", "layers=[1]", "--set", "modules=[mlp.down_proj]", "--set",
                     "max_steps=1")
    assert rc == 2 and "did not take" in one_line(err) and not new.exists()
    rc, _, err = run(capsys, "edit", "apply", "--store", str(new), "--model", str(tiny_llama),
                     "--prompt", "word " * 100, "--target", " r", *TINY_SOLA)  # 100 words > the tiny model's 64 positions
    assert rc == 2 and "longer than the model's context of 64 tokens" in one_line(err) and not new.exists()
    rc, _, err = run(capsys, "edit", "apply", "--store", str(new), "--model", "/nonexistent/model", "--prompt", "p",
                     "--target", " r")
    assert rc == 2 and not new.exists()


def test_a_hub_id_that_is_not_cached_fails_at_once_offline(monkeypatch):
    from lifelong.adapters.lm.model_loading import load_causal_lm

    for offline, endpoint, why in (("1", None, "the hub is switched off"),
                                   ("0", "http://127.0.0.1:9", "http://127.0.0.1:9 cannot be reached")):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        if endpoint:
            monkeypatch.setenv("HF_ENDPOINT", endpoint)
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=f"'no-org/no-such-model' is not in the local Hugging Face cache.*{why}"):
            load_causal_lm("no-org/no-such-model")
        assert time.perf_counter() - t0 < 5


def test_eval_reports_a_damaged_edit_instead_of_a_perfect_score(tmp_path, capsys, applied_store,
                                                                tiny_llama):  # noqa: F811
    store = tmp_path / "s"
    shutil.copytree(applied_store, store)
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"prompt": "The capital of Australia is", "target": " Canberra"}) + "\n")
    adapter = next((store / ADAPTER_DIR).iterdir())
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0x01
    adapter.write_bytes(bytes(data))
    rc, out, err = run(capsys, "edit", "eval", "--store", str(store), "--model", str(tiny_llama), "--file", str(f))
    assert rc == 2 and out == ""
    assert "edit 1: adapter file" in one_line(err) and "is corrupted" in err


# ------------------------------------------------------------------------------------ 6. property-based tests
_text = st.text(st.characters(codec="utf-16", exclude_categories=("Cs",)) | st.sampled_from("\x00\x07\ud800\n"),
                max_size=12)
_value = st.one_of(_text, st.integers(), st.none(), st.lists(_text, max_size=3), st.booleans())
_record = st.dictionaries(st.sampled_from(["prompt", "target", "paraphrases", "locality", "id", "src", "alt"]),
                          _value, max_size=5)
_line = st.one_of(_record.map(lambda r: json.dumps(r)), st.just("{not json"), st.just("[1]"), st.just(""))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=4))
def test_random_edit_files_are_valid_or_refused_with_file_line_and_field(tmp_path, lines):
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        reqs = load_edits(path)
    except UserError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(path) in msg, msg
        if msg != f"edit file {path} holds no records":  # else: the line (or the record of a JSON array) is named
            assert msg.startswith(str(path)) and msg[len(str(path)):].startswith((":", " record ")), msg
        return
    for r in reqs:  # accepted: text an edit can hold
        for t in (r.prompt, r.target, *r.paraphrases, *r.locality):
            assert t.strip() and not any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 and c not in "\t\n\r" for c in t)


def test_a_refused_edit_file_leaves_the_store_unchanged(tmp_path, capsys):
    """The CLI's path for the files the property test generates: refused before the model loads, store as it was."""
    store = make_store(tmp_path / "s", n=2)
    before = snapshot(store)
    f = tmp_path / "e.jsonl"
    for text in ('{"prompt": "a", "target": "b"}\n{"prompt": "a\\u0000", "target": "b"}\n', "{not json\n",
                 '{"prompt": "a"}\n'):
        f.write_text(text)
        rc, _, err = run(capsys, "edit", "apply", "--store", str(store), "--file", str(f))
        assert rc == 2 and f"{f}:" in one_line(err)
        assert snapshot(store) == before


@pytest.fixture(scope="module")
def flip_base(tmp_path_factory):
    base = make_store(tmp_path_factory.mktemp("flip") / "s", n=3)
    return base, snapshot(base)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
       target=st.sampled_from(["db", "adapter"]))
def test_random_byte_flips_are_refused_or_harmless_never_silently_wrong(tmp_path_factory, flip_base, flips, target):
    base, want = flip_base
    path = tmp_path_factory.mktemp("f") / "s"
    shutil.copytree(base, path)
    victim = path / DB_NAME if target == "db" else path / ADAPTER_DIR / want[0][1][10]  # edit 2's adapter file
    original = victim.read_bytes()
    data = bytearray(original)
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    victim.write_bytes(bytes(data))
    if target == "adapter":
        changed = bytes(data) != original  # two flips of one byte may cancel out
        with EditStore.open(path, create=False) as s:
            bad = s.verify()
            assert [i for i, _ in bad] == ([2] if changed else [])  # the flipped file is reported, by its edit
            if not changed:
                return
            with pytest.raises(CorruptEditError):
                s.load_tensors(s.get(2))
            for i in (1, 3):  # the other edits still load
                assert float(s.load_tensors(s.get(i))["w"][0, 0]) == i - 1
        return
    try:
        got = snapshot(path)
        with EditStore.open(path, create=False) as s:  # a writer opens it too (checks, migration, cleaning)
            got_rw = (len(s), sorted(s.router().ids()))
    except StoreError as exc:
        assert "\n" not in str(exc) and str(path / DB_NAME) in str(exc) or str(path) in str(exc), str(exc)
        return
    assert got == want  # accepted: exactly what was stored
    assert got_rw == (3, want[4])
