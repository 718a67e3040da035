"""``atomic_folder``: a folder is replaced whole or not at all, whatever stops the writer, and what a killed writer
leaves beside it is settled on the next open."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.platform import atomic
from lifelong.platform.atomic import aside_path, atomic_folder, recover_folder
from lifelong.platform.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fill(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _write(out: Path, files: dict[str, bytes], **kwargs) -> None:
    with atomic_folder(out, **kwargs) as tmp:
        _fill(tmp, files)


OLD = {"config.json": b'{"v": "old"}', "sub/w.bin": b"\x00" * 64}
NEW = {"config.json": b'{"v": "new"}', "head.bin": b"\x01" * 32}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_new_folder_replaces_old_whole_and_leaves_nothing_beside(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    _write(out, OLD)
    assert _tree(out) == OLD
    stages: list[str] = []
    _write(out, NEW, hook=stages.append)
    assert _tree(out) == NEW  # no file of the old folder is left in the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert stages == (["written", "fsynced", "renamed"] if exchange else ["written", "fsynced", "aside", "renamed"])


@pytest.mark.parametrize("exchange,stage", [(True, "block"), (True, "written"), (True, "fsynced"),
                                            (False, "fsynced"), (False, "aside")])
def test_an_exception_anywhere_before_the_swap_leaves_the_old_folder_and_no_temporary(tmp_path, monkeypatch,
                                                                                      exchange, stage):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    _write(out, OLD)

    def die(reached: str) -> None:
        if reached == stage:
            raise KeyboardInterrupt(stage)

    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, hook=die) as tmp:
            _fill(tmp, NEW)
            if stage == "block":
                raise KeyboardInterrupt("block")
    assert _tree(out) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    _write(out, OLD)
    real, failed = os.replace, []

    def full_disk(src, dst):
        if Path(dst) == out and not failed:  # the new folder into place (the restore after it may rename)
            failed.append(src)
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError):
        _write(out, NEW)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert failed and _tree(out) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_aside_left_by_a_crash_is_restored_or_removed_on_the_next_open(tmp_path):
    out = tmp_path / "model"
    _write(out, OLD)
    os.replace(out, aside_path(out))  # killed between the two renames: the old folder whole, aside, none at out
    recover_folder(out)
    assert _tree(out) == OLD and not aside_path(out).exists()

    os.replace(out, aside_path(out))
    _write(out, NEW)  # a writer's open settles it too, then writes
    assert _tree(out) == NEW and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    aside_path(out).mkdir()
    _fill(aside_path(out), OLD)  # killed after the new folder was in: the aside is stale
    recover_folder(out)
    assert _tree(out) == NEW and not aside_path(out).exists()


_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from lifelong.platform import atomic
    out, stage, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    if not exchange:
        atomic._exchange = lambda a, b: False
    def die(reached):
        if reached == stage:
            os._exit(9)  # no handler runs: as SIGKILL
    with atomic.atomic_folder(out, hook=die) as tmp:
        (tmp / "config.json").write_text('{"v": "new"}')
""")


@pytest.mark.parametrize("exchange,stage", [(True, "fsynced"), (True, "renamed"), (False, "aside"),
                                            (False, "renamed")])
def test_a_killed_writer_leaves_old_or_new_and_the_next_open_cleans_up(tmp_path, exchange, stage):
    out = tmp_path / "model"
    _write(out, OLD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    rc = subprocess.run([sys.executable, "-c", _CHILD, str(out), stage, "1" if exchange else "0"], env=env,
                        timeout=60).returncode
    assert rc == 9
    recover_folder(out)
    assert _tree(out) == (OLD if stage in ("fsynced", "aside") else {"config.json": b'{"v": "new"}'})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the dead writer's temporary is gone


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        recover_folder(out)  # another reader's open, while this writer is still filling its folder
        assert tmp.is_dir()
        (tmp / "a").write_text("x")
    assert _tree(out) == {"a": b"x"}


def test_no_replace_refuses_a_full_folder_and_takes_an_empty_one(tmp_path):
    out = tmp_path / "adapter"
    _write(out, OLD, replace=False)
    with pytest.raises(UserError, match="exists and is not empty"):
        _write(out, NEW, replace=False)
    assert _tree(out) == OLD
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty, NEW, replace=False)
    assert _tree(empty) == NEW
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        _write(tmp_path / "file", NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "empty", "file"]


def test_the_parent_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced: list[Path] = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    _write(tmp_path / "new", NEW)
    assert synced[-1] == tmp_path
    synced.clear()
    _write(tmp_path / "new", OLD)
    assert synced[-1] == tmp_path


_files = st.dictionaries(st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6})?", fullmatch=True), st.binary(max_size=64),
                         min_size=1, max_size=5).filter(
    lambda d: not any(a != b and b.startswith(a + "/") for a in d for b in d))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=_files, new=_files, fail=st.booleans())
def test_the_folder_is_always_exactly_old_or_new(tmp_path_factory, old, new, fail):
    out = tmp_path_factory.mktemp("prop") / "f"
    _write(out, old)
    try:
        with atomic_folder(out) as tmp:
            _fill(tmp, new)
            if fail:
                raise ValueError("stop")
    except ValueError:
        pass
    assert _tree(out) == (old if fail else new)
    assert [p.name for p in out.parent.iterdir()] == ["f"]
