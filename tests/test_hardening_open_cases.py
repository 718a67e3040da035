"""Regression tests of the cases of the second hardening round that were still open (``docs/reliability.md``,
"Second hardening round"): the SoLA key site checked against the model, undecodable reward arguments, an export
into a read-only folder, an adapter made for another base model, a reward model whose checksum was removed, a
full disk under a rollback of the server, and a router index that cannot be written. Each runs the command the
way a user does (in-process, ``tests/_cli.py``) on the tiny Llama."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from _cli import one_line, run
from _fs import read_only_dir  # noqa: F401
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main
from lifelong.editing.store import EditStore

PROMPT, TARGET = "The capital of Australia is", " Canberra"
TINY = ["--set", "layers=[1]", "--set", "modules=[mlp.down_proj]", "--set", "max_steps=20", "--set", "lr=0.05"]


@pytest.fixture(scope="module")
def store_and_adapter(tmp_path_factory, tiny_llama):  # noqa: F811
    """A SoLA store of one edit on the tiny Llama, and that edit exported as a PEFT adapter folder."""
    root = tmp_path_factory.mktemp("open-cases")
    assert main(["edit", "apply", "--store", str(root / "store"), "--model", str(tiny_llama), "--prompt", PROMPT,
                 "--target", TARGET, *TINY]) == 0
    assert main(["edit", "export", "--store", str(root / "store"), "--id", "1", "--out", str(root / "adapter")]) == 0
    return root / "store", root / "adapter"


def test_calibrate_refuses_a_key_layer_or_key_module_the_model_lacks(tmp_path, capsys, tiny_llama):  # noqa: F811
    """``key_layer=999`` was a ValueError traceback (exit 1); ``key_module=nosuch.proj`` without ``key_layer``
    calibrated silently (exit 0). Both name the allowed values now, exit 2."""
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"prompt": PROMPT, "target": TARGET, "paraphrases": ["Australia's capital is"],
                               "locality": ["The capital of Spain is"]}) + "\n")
    base = ["edit", "calibrate", "--file", str(dev), "--model", str(tiny_llama), "--set", "layers=[1]",
            "--set", "modules=[mlp.down_proj]"]
    for extra, words in [(["key_layer=999"], ["key_layer: 999 is not allowed", "allowed values 0..1"]),
                         (["key_layer=-999"], ["key_layer: -999 is not allowed", "allowed values 0..1"]),
                         (["key_module=nosuch.proj"], ["'nosuch.proj' is not a module of decoder layer 1",
                                                       "self_attn.o_proj", "mlp.up_proj"]),
                         (["key_layer=0", "key_module=nosuch.proj"], ["not a module of decoder layer 0"])]:
        sets = [a for value in extra for a in ("--set", value)]
        code, out, err = run(capsys, *base, *sets)
        line = one_line(err)
        assert code == 2 and out == "" and all(w in line for w in words), (extra, line)
    code, _, err = run(capsys, *base, "--set", "key_layer=0", "--set", "key_module=mlp.up_proj", "--json")
    assert code == 0, err  # a key site the model has still calibrates


def test_reward_score_refuses_undecodable_argument_bytes_in_one_line(tmp_path, capsys):
    """``--prompt $'\\xff'`` reaches Python as a lone surrogate; it was a UnicodeEncodeError traceback."""
    folder = _saved_reward_model(tmp_path / "rm")
    for option, value, byte in [("--prompt", "a\udcff", "0xff"), ("--response", "\udced\udca0\udc80", "0xed")]:
        texts = {"--prompt": "p", "--response": "r", option: value}
        code, out, err = run(capsys, "reward", "score", "--model", str(folder), "--prompt", texts["--prompt"],
                             "--response", texts["--response"])
        line = one_line(err)
        assert code == 2 and out == "" and f"{option} holds the byte {byte}, which is not UTF-8" in line, line


def test_export_into_a_read_only_folder_is_one_line_and_leaves_nothing(store_and_adapter, capsys,
                                                                        read_only_dir):  # noqa: F811
    store, _ = store_and_adapter
    for out in (read_only_dir / "adapter", read_only_dir / "a" / "b"):
        code, stdout, err = run(capsys, "edit", "export", "--store", str(store), "--id", "1", "--out", str(out))
        line = one_line(err)
        assert code == 2 and stdout == "" and f"cannot write the adapter to --out {out}" in line, line
        assert "read-only" in line or "permission denied" in line, line
    assert list(read_only_dir.iterdir()) == []


def test_import_of_an_adapter_made_for_another_base_is_refused(store_and_adapter, capsys, tmp_path,
                                                               tiny_llama):  # noqa: F811
    """The adapter's ``base_model_name_or_path`` must name the model the edit goes to (``--model``, else the
    store's); ``--allow-other-base`` is the documented way past it."""
    store, adapter = store_and_adapter
    other = tmp_path / "other-base"
    other.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_llama)
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "org/another-model"}))
    (other / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    before = _rows(store)
    for model in ([], ["--model", str(tiny_llama)]):
        code, out, err = run(capsys, "edit", "import", "--store", str(store), "--adapter", str(other), "--prompt",
                             "The capital of Turkey is", "--target", " Ankara", *model)
        line = one_line(err)
        assert code == 2 and out == "" and "made for base model 'org/another-model'" in line, line
        assert f"would go to {str(tiny_llama)!r}" in line and "--allow-other-base" in line, line
    assert _rows(store) == before
    code, out, err = run(capsys, "edit", "import", "--store", str(store), "--adapter", str(other), "--prompt",
                         "The capital of Turkey is", "--target", " Ankara", "--allow-other-base", "--json")
    assert code == 0 and json.loads(out)["imported"] == 2, err


def test_a_reward_model_without_its_checksum_is_refused_unless_allowed(tmp_path, capsys):
    """A head changed by hand and the checksum field then deleted from config.json used to load and score."""
    folder = _saved_reward_model(tmp_path / "rm")
    head = folder / "head.safetensors"
    tampered = bytearray(head.read_bytes())
    tampered[-5] ^= 0x40  # one weight's exponent: a reward of ~1e35 when it loads
    head.write_bytes(bytes(tampered))
    meta = json.loads((folder / "config.json").read_text())
    del meta["head_sha256"]
    (folder / "config.json").write_text(json.dumps(meta))
    for command in (["score", "--prompt", "p", "--response", "r"], ["eval"]):
        code, out, err = run(capsys, "reward", *command, "--model", str(folder))
        line = one_line(err)
        assert code == 2 and out == "" and "records no head_sha256" in line and "--allow-unverified" in line, line
    code, out, err = run(capsys, "reward", "score", "--model", str(folder), "--prompt", "p", "--response", "r",
                         "--json", "--allow-unverified")
    assert code == 0 and "reward" in json.loads(out), err


def _saved_reward_model(folder: Path) -> Path:
    """A scalar reward model with a small random head over the sentence encoder's 384 dimensions, saved."""
    from lifelong.platform.registry import create
    from lifelong.scorers.reward_model import RewardHead

    rm = create("scorer", "scalar-rm", cache_dir=":memory:", device="cpu", hidden=4)
    torch.manual_seed(0)
    rm.head = RewardHead(384, {}, 4, 0.0)
    rm.save(folder)
    return folder


def _rows(store: Path) -> list[tuple]:
    with EditStore.open(store, create=False, readonly=True) as st:
        return [(r.id, r.status, r.prompt) for r in st.all_edits()]


def _full_disk_at_commit(monkeypatch, error: BaseException) -> None:
    """Every store write transaction of this process runs its statements, then fails at the commit like a full
    disk (``error``: an ``OSError(ENOSPC)`` or SQLite's own "database or disk is full"); SQLite rolls it back."""
    import contextlib

    from lifelong.editing import store_db

    real = store_db.write_txn

    @contextlib.contextmanager
    def failing(conn, timeout_s):
        with contextlib.ExitStack() as stack:
            stack.enter_context(real(conn, timeout_s))
            yield
            raise error  # inside the real transaction: it is rolled back, as a failed commit is

    monkeypatch.setattr(store_db, "write_txn", failing)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   sqlite3.OperationalError("database or disk is full")], ids=["ENOSPC", "SQLITE_FULL"])
def test_a_rollback_on_a_full_disk_is_507_never_404_and_changes_nothing(tmp_path, monkeypatch, tiny_llama,
                                                                        error):  # noqa: F811
    """``DELETE /v1/edits/2`` on a full disk answered 404 "no edit with id 2" while the edit existed."""
    from fastapi.testclient import TestClient

    from lifelong.editing.session import EditSession
    from lifelong.serving.server import ServerOptions, build_app

    store = tmp_path / "store"
    for prompt, target in [(PROMPT, TARGET), ("The capital of Turkey is", " Ankara")]:
        assert main(["edit", "apply", "--store", str(store), "--model", str(tiny_llama), "--prompt", prompt,
                     "--target", target, *TINY]) == 0
    before = _rows(store)
    session = EditSession(store, model=str(tiny_llama), create=False, quiet=True)
    try:
        client = TestClient(build_app(session, ServerOptions(token="t")))
        auth = {"Authorization": "Bearer t"}
        with monkeypatch.context() as m:
            _full_disk_at_commit(m, error)
            r = client.delete("/v1/edits/2", headers=auth)
            assert r.status_code == 507, r.text
            message = r.json()["error"]["message"]
            assert "disk is full" in message and "edit 2 was not rolled back" in message and str(store) not in message
            assert client.delete("/v1/edits/99", headers=auth).status_code == 404  # an unknown id is still 404
        assert _rows(store) == before and session.loaded_ids == [1, 2]
        listed = {e["id"]: (e["status"], e["in_force"]) for e in client.get("/v1/edits").json()["data"]}
        assert listed == {1: ("active", True), 2: ("active", True)}
        r = client.delete("/v1/edits/2", headers=auth)  # space again: the rollback goes through
        assert r.status_code == 200 and r.json()["rolled_back"] is True, r.text
    finally:
        session.close()
    with EditStore.open(store, create=False, readonly=True) as st:
        assert [e.id for e in st.active_edits()] == [1] and sorted(st.router().ids()) == [1]


def test_a_full_disk_while_the_router_index_is_written_is_one_warning_and_the_index_is_rebuilt(
        tmp_path, capsys, monkeypatch, tiny_llama):  # noqa: F811
    """faiss reports a failed ``write_index`` as a RuntimeError, which ended ``edit apply`` in a traceback after
    the edit was committed. Now: one warning line, exit 0 (the edit is stored; failing would invite a duplicate
    apply), no temporary file left, and the next open finds the old index not matching the rows and rebuilds it."""
    import faiss

    store = tmp_path / "store"
    assert main(["edit", "apply", "--store", str(store), "--model", str(tiny_llama), "--prompt", PROMPT,
                 "--target", TARGET, *TINY]) == 0
    capsys.readouterr()
    meta_before = (store / "router.json").read_text()

    def full_disk(index, path):
        Path(path).write_bytes(b"IxF2half")  # part of a file, then the error faiss raises for a failed fwrite
        raise RuntimeError("Error in faiss::FileIOWriter::operator()(const void *, size_t, size_t) at "
                           "faiss/impl/io.cpp:98: Error: 'ret == (nitems)' failed: write error in "
                           f"{path}: 0 != 1 (No space left on device)")

    with monkeypatch.context() as m:
        m.setattr(faiss, "write_index", full_disk)
        code, out, err = run(capsys, "edit", "apply", "--store", str(store), "--model", str(tiny_llama),
                             "--prompt", "The capital of Turkey is", "--target", " Ankara", *TINY)
    warnings = [x for x in err.splitlines() if "lifelong:" in x]
    assert code == 0 and "applied edit 2" in out, err
    assert len(warnings) == 1 and warnings[0].startswith("lifelong: warning: could not write the router index"), err
    assert "no space left on the device" in warnings[0] and "rebuilt" in warnings[0], err
    assert (store / "router.json").read_text() == meta_before  # the old index, built from edit 1 alone
    assert not [p.name for p in store.iterdir() if p.name.endswith(".tmp")]
    with EditStore.open(store, create=False) as st:  # the rows are what the command said: two active edits
        assert [e.id for e in st.active_edits()] == [1, 2]
        assert sorted(st.router().ids()) == [1, 2]  # the stale file is not used: rebuilt from the rows
    assert json.loads((store / "router.json").read_text())["ntotal"] == 2  # and written again, now there is room


@pytest.mark.parametrize("field, value, words", [
    ("config", None, "field 'config' must be an object"),
    ("config", "tiny", "field 'config' must be an object"),
    ("branches", None, "field 'branches' must be an object"),
    ("branches", {"style": "x"}, "must map each branch to a list of feature names"),
    ("training", None, "field 'training' must be an object"),
    ("embed_dim", 10**7, "embed_dim 10000000 is not a sentence encoder's width"),
    ("config.hidden", 10**9, "hidden must be from 1 to 65536"),
])
def test_a_hand_edited_reward_config_is_one_line(tmp_path, capsys, field, value, words):
    """Found by tests/test_fuzz_surfaces.py: a null or mistyped field of config.json was a TypeError or
    ValueError traceback; a huge ``hidden`` or ``embed_dim`` allocated gigabytes before the head was checked."""
    folder = _saved_reward_model(tmp_path / "rm")
    meta = json.loads((folder / "config.json").read_text())
    if field.startswith("config."):
        meta["config"][field.split(".", 1)[1]] = value
    else:
        meta[field] = value
    (folder / "config.json").write_text(json.dumps(meta))
    code, out, err = run(capsys, "reward", "score", "--model", str(folder), "--prompt", "p", "--response", "r")
    line = one_line(err)
    assert code == 2 and out == "" and words in line, line


def test_a_path_too_long_for_the_file_system_is_one_line(capsys):
    """Found by tests/test_fuzz_surfaces.py: ``edit list --store`` with a 3,000-character name was an ``OSError``
    (ENAMETOOLONG) traceback from ``Path.is_file``; the command line now answers any such path error in one line."""
    long = "x" * 3000
    for argv in (["edit", "list", "--store", long], ["edit", "rollback", "--store", long, "1"]):
        code, out, err = run(capsys, *argv)
        line = one_line(err)
        assert code == 2 and "the name is too long" in line and "characters)" in line and len(line) < 300, line
