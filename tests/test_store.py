"""EditStore: atomic apply under SIGKILL, concurrent writers, corruption, model identity, rollback, router."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.platform.errors import UserError
from lifelong.editing.store import ADAPTER_DIR, CorruptEditError, EditStore, StoreError

IDENT = {"name": "m", "weights_sha256": "a" * 64}


def _tensors(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"lora_A": torch.randn(4, 64, generator=g), "lora_B": torch.randn(32, 4, generator=g)}


def _key(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(16).astype(np.float32)


def test_add_list_rollback_and_router(tmp_path):
    with EditStore.open(tmp_path / "s", model_identity=IDENT) as s:
        recs = [s.add_edit(f"prompt {i}", f"target {i}", editor="sola", tensors=_tensors(i), key=_key(i))
                for i in range(3)]
        assert [r.id for r in s.active_edits()] == [1, 2, 3]
        scores, ids = s.search(np.stack([_key(1)]), k=1)
        assert ids[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert s.rollback([2]) == [(2, True)]
        assert s.rollback([2]) == [(2, False)]  # twice: no-op
        with pytest.raises(StoreError, match="no edit with id 99"):
            s.rollback([1, 99])
        assert s.get(1).status == "active"  # the refused call changed nothing
        _, ids = s.search(np.stack([_key(1)]), k=1)
        assert ids[0, 0] != 2
        assert [r.id for r in s.active_edits()] == [1, 3]
        assert [r.status for r in s.all_edits()] == ["active", "rolled_back", "active"]
        t = s.load_tensors(recs[2])
        assert torch.equal(t["lora_A"], _tensors(2)["lora_A"])
        assert s.router().ids() == {1, 3}


def test_router_rebuilt_when_checksum_differs(tmp_path):
    d = tmp_path / "s"
    with EditStore.open(d) as s:
        for i in range(4):
            s.add_edit(f"p{i}", f"t{i}", editor="sola", tensors=_tensors(i), key=_key(i))
        s.router()
    (index_file,) = d.glob("router-*.faiss")
    # another writer changes the rows behind the saved index: the index must be rebuilt from the database
    with EditStore.open(d) as s2:
        s2.rollback([1])
    meta_before = json.loads((d / "router.json").read_text())
    with EditStore.open(d) as s3:
        _, ids = s3.search(np.stack([_key(0)]), k=3)
        assert 1 not in ids[0].tolist()
        assert s3.router().ntotal == 3
    assert json.loads((d / "router.json").read_text())["checksum"] != meta_before["checksum"]
    (index_file,) = d.glob("router-*.faiss")
    index_file.write_bytes(b"garbage")  # a damaged index file is also rebuilt
    with EditStore.open(d) as s4:
        assert s4.router().ntotal == 3


def test_model_identity_is_checked(tmp_path):
    EditStore.open(tmp_path / "s", model_identity=IDENT).close()
    with pytest.raises(StoreError, match="was made for model 'm'"):
        EditStore.open(tmp_path / "s", model_identity={"name": "other", "weights_sha256": "b" * 64})
    EditStore.open(tmp_path / "s", model_identity=IDENT).close()


def test_corrupted_adapter_detected_by_hash(tmp_path):
    with EditStore.open(tmp_path / "s") as s:
        recs = [s.add_edit(f"p{i}", f"t{i}", editor="sola", tensors=_tensors(i), key=_key(i)) for i in range(3)]
        path = tmp_path / "s" / ADAPTER_DIR / recs[1].adapter_file
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptEditError, match="edit 2: adapter file .* is corrupted"):
            s.load_tensors(recs[1])
        assert [i for i, _ in s.verify()] == [2]
        assert torch.equal(s.load_tensors(recs[0])["lora_B"], _tensors(0)["lora_B"])
        assert torch.equal(s.load_tensors(recs[2])["lora_B"], _tensors(2)["lora_B"])


def test_open_missing_store_without_create(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        EditStore.open(tmp_path / "nope", create=False)


_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np, torch
    from lifelong.editing.store import EditStore
    path, start, count, die_stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    def hook_for(i):
        def hook(stage):
            if die_stage != "none" and i == start + count - 1 and stage == die_stage:
                os.kill(os.getpid(), signal.SIGKILL)
        return hook
    with EditStore.open(path) as s:
        print("ready", flush=True)
        for i in range(start, start + count):
            g = torch.Generator().manual_seed(i)
            t = {"lora_A": torch.randn(8, 256, generator=g), "lora_B": torch.randn(256, 8, generator=g)}
            k = np.random.default_rng(i).standard_normal(16).astype(np.float32)
            s.add_edit(f"prompt {i}", f"target {i}", editor="sola", tensors=t, key=k, _crash_hook=hook_for(i))
""")


def _run_writer(tmp_path: Path, store: Path, start: int, count: int, die: str = "none") -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    return subprocess.Popen([sys.executable, str(script), str(store), str(start), str(count), die],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_intact(store: Path) -> list[int]:
    """Reopen: every row's file exists and matches its hash and content; no orphan or temp file remains."""
    with EditStore.open(store) as s:
        recs = s.all_edits()
        for r in recs:
            i = int(r.prompt.split()[1])
            t = s.load_tensors(r)
            g = torch.Generator().manual_seed(i)
            assert torch.equal(t["lora_A"], torch.randn(8, 256, generator=g)), f"edit {r.id} content differs"
            assert r.key is not None and np.array_equal(r.key, np.random.default_rng(i).standard_normal(16).astype(np.float32))
        files = sorted(p.name for p in (store / ADAPTER_DIR).iterdir())
        assert files == sorted(r.adapter_file for r in recs), "orphan or missing adapter files"
        assert s.router() is None or s.router().ntotal == len(s.active_edits())
        return [int(r.prompt.split()[1]) for r in recs]


def test_sigkill_at_each_stage_leaves_whole_edits_only(tmp_path):
    stages = ["fsynced", "renamed", "inserted"]
    procs = {st: _run_writer(tmp_path, tmp_path / st, 0, 3, die=st) for st in stages}  # in parallel
    for st, proc in procs.items():
        proc.wait(timeout=180)
        assert proc.returncode == -signal.SIGKILL, (st, proc.stderr.read())
    for st in stages:
        store = tmp_path / st
        leftovers = [p.name for p in (store / ADAPTER_DIR).iterdir()]
        assert len(leftovers) >= (2 if st in ("written", "fsynced") else 3)  # the crash left a file behind
        assert _check_intact(store) == [0, 1], st  # the third edit is entirely absent, the first two whole


def test_sigkill_at_random_times(tmp_path):
    rng = random.Random(1234)
    store = tmp_path / "s"
    applied_before = 0
    for trial in range(2):
        proc = _run_writer(tmp_path, store, 1000 * trial, 400)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        got = _check_intact(store)
        assert len(got) >= applied_before
        applied_before = len(got)
        # every committed edit of this trial is a prefix of its sequence: nothing skipped, nothing partial
        mine = [i - 1000 * trial for i in got if 1000 * trial <= i < 1000 * trial + 400]
        assert mine == list(range(len(mine)))


def test_two_concurrent_writers_lose_nothing(tmp_path):
    store = tmp_path / "s"
    EditStore.open(store).close()
    a = _run_writer(tmp_path, store, 0, 20)
    b = _run_writer(tmp_path, store, 1000, 20)
    for p in (a, b):
        p.wait(timeout=300)
        assert p.returncode == 0, p.stderr.read()
    got = _check_intact(store)
    assert sorted(got) == list(range(20)) + list(range(1000, 1020))
    with EditStore.open(store) as s:
        ids = [r.id for r in s.all_edits()]
        assert len(set(ids)) == 40


def test_reopen_removes_the_unnamed_files_of_its_own_writes_only(tmp_path):
    """A writer killed between naming its adapter file in the ``pending`` manifest and committing its row leaves that
    file and its ``.NAME.*.tmp``; reopening the store removes them and keeps the named files. Files the store did
    not write (a ``.tmpXXXXXX``, a file named like an adapter) are never removed (issue 33: data loss)."""
    store = tmp_path / "s"
    with EditStore.open(store) as s:
        rec = s.add_edit("p", "t", editor="sola", tensors={"w": torch.ones(2)}, key=np.ones(4, dtype=np.float32))
    ours = "ab" * 16 + ".safetensors"
    leftovers = [ours, f".{ours}.x1y2.tmp"]
    foreign = [".tmpegzCXJ", ".abc.safetensors.x1y2.tmp", "0123abcd.safetensors"]
    for name in leftovers + foreign:
        (store / ADAPTER_DIR / name).write_bytes(b"partial")
    with sqlite3.connect(store / "edits.sqlite") as c:  # what the killed writer had committed
        c.execute("INSERT INTO pending(file, created_at) VALUES (?, 0)", (ours,))
    with EditStore.open(store) as s:
        assert sorted(p.name for p in (store / ADAPTER_DIR).iterdir()) == sorted([rec.adapter_file, *foreign])
        assert torch.equal(s.load_tensors(s.get(rec.id))["w"], torch.ones(2))
