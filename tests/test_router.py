"""The store's router (``editing/router.py``) with real faiss: exact and IVF recall, the editor's metric recorded
and used, rebuild of a missing or stale index file, rollback dropping the key in the row's transaction (also
under SIGKILL), ties, restricted search, and a property test: any add/rollback sequence leaves the index equal to
the set of active keys."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.editing.router import Router
from lifelong.editing.store import SCHEMA_VERSION, EditStore, StoreError
from lifelong.platform import registry


def _keys(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_recall_of_every_stored_key(metric):
    keys = _keys(500)
    r = Router(metric)
    r.build(np.arange(1, 501), keys)
    assert r.kind == "flat" and r.ntotal == 500
    dist, ids = r.nearest(keys)
    assert (ids == np.arange(1, 501)).all()
    assert np.allclose(dist, 0.0, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ivf_past_the_threshold_recalls_stored_keys(metric, tmp_path):
    keys = _keys(3000, seed=1)
    r = Router(metric, ivf_min_keys=1000)
    r.build(np.arange(3000), keys)
    assert r.kind == "ivf"
    _, ids = r.nearest(keys)
    assert (ids == np.arange(3000)).mean() >= 0.99
    r.remove([5, 6])
    r.add([5000], keys[:1] * 2)
    assert 5 not in r and 5000 in r and r.ntotal == 2999
    assert not r.needs_rebuild()
    r.write(tmp_path, "c" * 64)  # saved and loaded back: same ids, same answers
    back = Router(metric, ivf_min_keys=1000)
    assert back.read(tmp_path, "c" * 64) and back.kind == "ivf" and back.ids() == r.ids()
    assert (back.nearest(keys[:200])[1] == r.nearest(keys[:200])[1]).all()
    assert not Router(metric).read(tmp_path, "d" * 64)  # another checksum: not loaded


def test_ties_newest_or_oldest_and_restricted_search():
    k = np.array([[1.0, 0, 0, 0]], dtype=np.float32)
    r = Router("ip")
    r.add([1], k)
    r.add([2], 3 * k)  # the same direction: a tie under cosine
    r.add([3], np.array([[0, 0, 1.0, 0]], dtype=np.float32))
    assert r.nearest(k)[1][0] == 2
    assert r.nearest(k, newest=False)[1][0] == 1
    dist, ids = r.nearest(k, allowed=np.array([3]))
    assert ids[0] == 3 and dist[0] == pytest.approx(1.0)
    empty = Router("l2")
    d, i = empty.nearest(k)
    assert i[0] == -1 and np.isinf(d[0])


def test_editor_metric_recorded_and_used(tmp_path):
    assert registry.get("editor", "grace").factory.metric == "l2"
    assert registry.get("editor", "sola").factory.metric == "ip"
    with EditStore.open(tmp_path / "g") as s:
        s.set_editor("grace", {}, metric=registry.get("editor", "grace").factory.metric)
        key = np.array([3.0, 4.0, 0, 0], dtype=np.float32)
        s.add_edit("p", "t", editor="grace", key=key)
        assert s.meta()["metric"] == "l2" and s.router().metric == "l2"
        assert s.router().index.metric_type == faiss.METRIC_L2
        scores, ids = s.search(np.zeros((1, 4), np.float32))
        assert ids[0, 0] == 1 and scores[0, 0] == pytest.approx(25.0)  # squared L2, not a cosine
        dist, _ = s.router().nearest(np.zeros((1, 4), np.float32))
        assert dist[0] == pytest.approx(5.0)  # Euclidean: what GRACE's radii are on
        with pytest.raises(StoreError, match="holds 'grace' edits"):
            s.set_editor("sola", {}, metric="ip")
    with EditStore.open(tmp_path / "g") as s:
        assert s.metric == "l2" and s.router().metric == "l2"


def test_schema1_store_gets_the_metric_of_its_editor(tmp_path):
    for name, want in (("grace", "l2"), ("sola", "ip"), ("ft-l", "l2")):
        d = tmp_path / name
        with EditStore.open(d) as s:
            s.set_editor(name, {})
            s.add_edit("p", "t", editor=name, key=np.ones(4, np.float32))
        with sqlite3.connect(d / "edits.sqlite") as c:  # what a schema-1 store looked like: always "ip"
            c.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('metric', 'ip')")
            c.execute("DELETE FROM meta WHERE key = 'keys_checksum'")
            c.execute("DELETE FROM meta WHERE key = 'meta_sha256'")  # schema 1 and 2 had no seal
            c.execute("UPDATE edits SET row_sha256 = NULL")
        with EditStore.open(d) as s:
            assert s.metric == want and s.meta()["schema_version"] == str(SCHEMA_VERSION)
            assert s.router().metric == want and s.router().ids() == {1}


def test_router_rebuilt_when_file_missing_or_stale(tmp_path):
    d = tmp_path / "s"
    keys = _keys(5, d=8)
    with EditStore.open(d) as s:
        for i in range(4):
            s.add_edit(f"p{i}", "t", editor="sola", key=keys[i])
        assert s.router().ids() == {1, 2, 3, 4}
    (f,) = d.glob("router-*.faiss")
    f.unlink()  # missing: rebuilt from the rows
    with EditStore.open(d) as s:
        assert s.router().ids() == {1, 2, 3, 4}
    assert len(list(d.glob("router-*.faiss"))) == 1
    # stale: another handle (another process) writes; this one's router follows the rows
    with EditStore.open(d) as a, EditStore.open(d) as b:
        ra = a.router()
        b.add_edit("p4", "t", editor="sola", key=keys[4])
        b.rollback([1])
        assert a.router() is ra and ra.ids() == {2, 3, 4, 5}
        assert ra.nearest(keys[4:5])[1][0] == 5


def test_rollback_drops_the_key_in_the_rows_transaction(tmp_path):
    keys = _keys(3, d=8)
    with EditStore.open(tmp_path / "s") as s:
        for i in range(3):
            s.add_edit(f"p{i}", "t", editor="sola", key=keys[i])
        router = s.router()

        def boom(stage: str) -> None:
            if stage == "routed":
                raise RuntimeError("crash before the commit")

        with pytest.raises(RuntimeError):
            s.rollback([2], _crash_hook=boom)
        assert s.get(2).status == "active"
        assert 2 in s.router() and s.router() is router  # the half-done removal is not kept
        s.rollback([2])
        assert 2 not in router and s.router().ids() == {1, 3}


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from lifelong.editing.store import EditStore
    path, stage = sys.argv[1], sys.argv[2]
    with EditStore.open(path) as s:
        s.router()
        def hook(st):
            if st == stage:
                os.kill(os.getpid(), signal.SIGKILL)
        s.rollback([2], _crash_hook=hook)
""")


@pytest.mark.parametrize("stage, rolled_back", [("routed", False), ("committed", True)])
def test_sigkill_during_rollback_leaves_rows_and_index_consistent(tmp_path, stage, rolled_back):
    d = tmp_path / "s"
    keys = _keys(3, d=8)
    with EditStore.open(d) as s:
        for i in range(3):
            s.add_edit(f"p{i}", "t", editor="sola", key=keys[i])
        s.router()  # the index file is on disk, built with edit 2 in it
    script = tmp_path / "kill.py"
    script.write_text(_KILLER)
    proc = subprocess.run([sys.executable, str(script), str(d), stage], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with EditStore.open(d) as s:
        assert (s.get(2).status == "rolled_back") is rolled_back
        active = {r.id for r in s.active_edits()}
        assert s.router().ids() == active
        assert (s.router().nearest(keys[1:2])[1][0] == 2) is not rolled_back


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["add", "rollback", "reopen"]), st.integers(0, 30)), max_size=14),
       st.sampled_from(["ip", "l2"]))
def test_any_add_rollback_sequence_keeps_index_equal_to_active_keys(ops, metric):
    with tempfile.TemporaryDirectory() as tmp:
        s = EditStore.open(f"{tmp}/s", metric=metric)
        keys: dict[int, np.ndarray] = {}
        try:
            s.router()
            for op, n in ops:
                if op == "add":
                    k = np.random.default_rng(n).standard_normal(6).astype(np.float32)
                    keys[s.add_edit(f"p{n}", "t", editor="x", key=k).id] = k
                elif op == "rollback" and keys:
                    s.rollback([sorted(keys)[n % len(keys)]])
                elif op == "reopen":
                    s.close()
                    s = EditStore.open(f"{tmp}/s")
                active = {r.id for r in s.active_edits()}
                r = s.router()
                assert r.ids() == active and r.ntotal == len(active) and r.metric == metric
                for i in active:  # each active key finds itself
                    dist, ids = r.nearest(keys[i][None])
                    assert dist[0] == pytest.approx(0.0, abs=1e-4)
        finally:
            s.close()
