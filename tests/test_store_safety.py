"""An edit store touches only what is its own, routes only by an index that matches its rows, and a session checks the
store's editor before it switches any row on (issue 33, ``docs/reliability.md``).

- Data loss: ``--store P`` on a folder that is not a store but holds files (``P/adapters/*``) is refused in one
  line, exit 2, and the folder is left as it was (``edit apply``, a refused apply, ``edit import``); a store
  removes only the leftovers of its own interrupted writes (named in its ``pending`` manifest), never a file that
  someone else put into its folders.
- Silent wrong answers: the router index file (``router-*.faiss``) is checked against ``router.json`` (SHA-256,
  size) and the rows (checksum, count, dimension) before faiss reads it; one flipped key byte means a rebuild (and
  ``edit generate`` still routes to the edit), one changed length byte never reaches faiss's reader.
- The racing first writer: a session that finds another editor's edit committed after it read the store's spec
  refuses in one line (exit 2) before activating it, instead of a traceback from the wrong editor.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import one_line, run
from _llm_fixtures import TINY_SOLA, tiny_llama  # noqa: F401

from lifelong.editing.router import ROUTER_META
from lifelong.editing.store import ADAPTER_DIR, EditStore, StoreError

PROMPT, TARGET = "The capital of Australia is", " Canberra"




def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_folder(path: Path) -> Path:
    """A folder that is not an edit store but holds someone's files, among them ``adapters/*``."""
    (path / ADAPTER_DIR).mkdir(parents=True)
    (path / ADAPTER_DIR / "keep.safetensors").write_bytes(b"precious weights")
    (path / ADAPTER_DIR / ("0" * 32 + ".safetensors")).write_bytes(b"named like a store's own file")
    (path / "notes.txt").write_text("notes")
    return path


# ------------------------------------------------------------------------------------------------- 1. data loss
def test_a_non_empty_folder_that_is_not_a_store_is_refused_and_left_as_it_is(tmp_path):
    folder = foreign_folder(tmp_path / "P")
    before = listing(folder)
    with pytest.raises(StoreError, match="is not an edit store .* and is not empty") as err:
        EditStore.open(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert listing(folder) == before and sorted(os.listdir(folder)) == [ADAPTER_DIR, "notes.txt"]
    (tmp_path / "empty").mkdir()  # an empty folder may become a store
    with EditStore.open(tmp_path / "empty") as s:
        assert len(s) == 0


def test_edit_apply_and_import_on_a_folder_of_foreign_files_delete_nothing(tmp_path, capsys, tiny_llama):  # noqa: F811
    folder = foreign_folder(tmp_path / "P")
    before = listing(folder)
    for extra in ([], ["--set", "max_steps=1"]):  # an apply that would be stored, and one that would be refused
        code, _, err = run(capsys, "edit", "apply", "--store", str(folder), "--model", str(tiny_llama), "--prompt",
                           "a b", "--target", " c", *TINY_SOLA, *extra)
        assert code == 2 and "is not an edit store" in one_line(err) and str(folder) in err
        assert listing(folder) == before
    adapter = tmp_path / "adapter"  # a readable PEFT folder: the refusal must come from the store, not the adapter
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(adapter / "adapter_model.safetensors"))
    code, _, err = run(capsys, "edit", "import", "--store", str(folder), "--adapter", str(adapter), "--prompt", "a b",
                       "--target", " c", "--model", str(tiny_llama))
    assert code == 2 and "is not an edit store" in one_line(err)
    assert listing(folder) == before


_CRASH = textwrap.dedent("""
    import os, sys
    import numpy as np, torch
    from lifelong.editing.store import EditStore
    def die(stage):
        if stage == sys.argv[2]:
            os._exit(9)
    with EditStore.open(sys.argv[1]) as s:
        s.add_edit("p2", "t", editor="sola", editor_config={}, metric="ip", tensors={"w": torch.ones(2)},
                   key=np.ones(4, np.float32), _crash_hook=die)
""")


@pytest.mark.parametrize("stage", ["written", "renamed"])
def test_a_store_removes_its_own_leftovers_and_nothing_else(tmp_path, stage):
    path = tmp_path / "store"
    with EditStore.open(path) as s:
        s.add_edit("p1", "t", editor="sola", editor_config={}, metric="ip", tensors={"w": torch.zeros(2)},
                   key=np.zeros(4, np.float32))
    adir = path / ADAPTER_DIR
    foreign = {"foreign.bin": b"x", "f" * 32 + ".safetensors": b"y", ".tmpabc123": b"z", "notes.txt": b"n"}
    for name, data in foreign.items():
        (adir / name).write_bytes(data)
    before = listing(adir)
    script = tmp_path / "crash.py"
    script.write_text(_CRASH)
    proc = subprocess.run([sys.executable, str(script), str(path), stage], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert set(os.listdir(adir)) - set(before), "the interrupted write left nothing to clean up"
    with EditStore.open(path) as s:  # opening reconciles: the interrupted write's file goes, nothing else
        assert [r.prompt for r in s.all_edits()] == ["p1"]
    assert listing(adir) == before


# -------------------------------------------------------------------------------------- 2. the router index file
def _index_file(store: Path) -> Path:
    meta = json.loads((store / ROUTER_META).read_text())
    return store / meta["file"]


def test_flipped_key_bytes_in_the_router_index_are_rebuilt_and_generate_still_routes(tmp_path, capsys,
                                                                                  tiny_llama):  # noqa: F811
    store = tmp_path / "store"
    assert run(capsys, "edit", "apply", "--store", str(store), "--model", str(tiny_llama), "--prompt", PROMPT,
               "--target", TARGET, *TINY_SOLA)[0] == 0
    with EditStore.open(store) as s:
        key = s.get(1).key
        s.router()  # the index file as the store writes it
    index = _index_file(store)
    data = bytearray(index.read_bytes())
    normalised = (key / np.linalg.norm(key)).astype(np.float32).tobytes()  # the ip metric stores unit keys
    at = bytes(data).find(normalised)
    assert at >= 0
    for i in range(at, at + len(normalised), 4):  # every component negated: the key now points away
        data[i + 3] ^= 0x80
    index.write_bytes(bytes(data))
    code, out, err = run(capsys, "edit", "generate", "--store", str(store), "--model", str(tiny_llama), "--prompt",
                         PROMPT, "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["edit_id"] == 1
    code, out, _ = run(capsys, "edit", "list", "--store", str(store), "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["active"]


_READ = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a safety net: 3 GiB of address space
    import faiss
    from lifelong.editing.store import EditStore
    reads = []
    for name in ("read_index", "deserialize_index"):
        real = getattr(faiss, name)
        def spy(*a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(*a, **k)
        setattr(faiss, name, spy)
    with EditStore.open(sys.argv[1], readonly=sys.argv[2] == "ro") as s:
        ids = sorted(s.router().ids())
    # this process's own peak (VmHWM; ru_maxrss would carry over the forking parent's peak across exec)
    peak_kb = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    print(json.dumps({"ids": ids, "reads": reads, "peak_mb": peak_kb / 1024}))
""")


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_a_changed_length_byte_never_reaches_faiss_and_the_index_is_rebuilt(tmp_path, mode):
    store = tmp_path / "store"
    n, dim = 40, 8
    with EditStore.open(store, metric="ip") as s:
        s.add_keys(np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32), editor="sola")
        s.router()
    script = tmp_path / "read.py"
    script.write_text(_READ)

    def read() -> dict:
        proc = subprocess.run([sys.executable, str(script), str(store), mode], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
        return json.loads(proc.stdout)

    assert read()["reads"], "an intact index file is loaded, not rebuilt"
    index = _index_file(store)
    data = bytearray(index.read_bytes())
    field = struct.pack("<Q", n * dim)  # faiss writes the flat index's vectors as their float count, then the floats
    at = bytes(data).find(field)
    assert at >= 0 and data[at + 8 + 4 * n * dim:at + 16 + 4 * n * dim] == struct.pack("<Q", n)  # then the ids
    data[at + 3] = 0xC0  # 3.2e9 floats: 12.9 GB announced
    index.write_bytes(bytes(data))
    got = read()
    assert got["ids"] == list(range(1, n + 1))
    assert got["reads"] == [] and got["peak_mb"] < 1024, got


# ------------------------------------------------------------------------------------- 3. the racing first writer
@pytest.mark.parametrize("window", ["before the router is bound", "before the rows are read"])
def test_another_editors_row_committed_while_a_session_opens_is_one_line(tmp_path, capsys, tiny_llama,  # noqa: F811
                                                                         monkeypatch, window):
    """Two ``edit apply`` racing on a new store (sola and grace): the loser has read no editor spec when the winner's
    first grace edit is committed, either while the loser creates its sola editor (before it binds the store's
    router) or just before it reads the store's rows. The loser must refuse in the store's one line, exit 2, never
    bind a router of the other metric or hand a GRACE row to SoLA (a ValueError traceback, issue 33); the store
    keeps the winner's edit only."""
    from lifelong.editing import session as session_mod
    from lifelong.editing.session import EditSession

    store = tmp_path / "store"
    won: list[int] = []

    def winner_commits() -> None:
        won.append(0)
        with EditSession(store, model=str(tiny_llama), editor="grace", editor_config={"layer": 1},
                         quiet=True) as winner:
            won[0] = winner.apply(PROMPT, "Canberra").id

    if window == "before the router is bound":
        real_create = session_mod.registry.create

        def create(kind: str, name: str, **cfg):  # the loser's editor, made from no spec
            if kind == "editor" and name == "sola" and not won:
                winner_commits()
            return real_create(kind, name, **cfg)

        monkeypatch.setattr(session_mod.registry, "create", create)
    else:
        real_version = EditStore.version

        def version(self: EditStore) -> int:  # read by the loser's session just before its rows
            if not won:
                winner_commits()
            return real_version(self)

        monkeypatch.setattr(EditStore, "version", version)
    code, _, err = run(capsys, "edit", "apply", "--store", str(store), "--editor", "sola", "--model", str(tiny_llama),
                       "--prompt", "a b", "--target", " c", *TINY_SOLA)
    assert won and code == 2, err
    line = one_line(err)
    assert "'grace'" in line and "'sola'" in line and line.endswith("use a new store"), line
    with EditStore.open(store, readonly=True) as s:
        assert [(r.id, r.editor) for r in s.all_edits()] == [(won[0], "grace")] and s.editor_spec()[0] == "grace"
