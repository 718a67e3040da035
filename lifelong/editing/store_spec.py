"""What an edit store is fixed to: the base model it was made for and the editor spec of its edits.

The first writer records them inside its own write transaction (the model identity at open, the editor, its
config and the router metric with the first edit, ``EditStore.add_edit``); every later writer checks them in its
own transaction, so of two first writers with different specs exactly one wins and the other gets one line and
writes nothing. Configs are compared on the keys both sides set (a key only one side has is its default, so a
store made before a config field existed stays usable). This module changes when that policy changes; the store
(``editing/store.py``) calls it with its open connection.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from lifelong.editing.store_schema import StoreError, get_meta, set_meta


def editor_spec(conn: sqlite3.Connection) -> tuple[str, dict[str, Any]] | None:
    """The recorded ``(editor name, config)``, or None for a store without one."""
    raw = get_meta(conn, "editor")
    if raw is None:
        return None
    d = json.loads(raw)
    return d["name"], d.get("config", {})


def check_editor_name(conn: sqlite3.Connection, folder: Path, name: str) -> None:
    """Refuse an editor other than the recorded one (the name only)."""
    spec = editor_spec(conn)
    if spec is not None and spec[0] != name:
        raise StoreError(f"edit store {folder} holds {spec[0]!r} edits; it cannot take {name!r} edits "
                         f"(use --editor {spec[0]} or a new store)")


def config_diff(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The keys both configs set to different values."""
    return sorted(k for k in set(have) & set(want) if have[k] != want[k])


def _metric_clash(conn: sqlite3.Connection, folder: Path, name: str, metric: str | None, end: str) -> None:
    have = get_meta(conn, "metric")
    if metric is not None and have is not None and have != metric:
        raise StoreError(f"edit store {folder} routes its keys by {have!r}; a {name!r} editor routes by {metric!r}{end}")


def editor_conflict(conn: sqlite3.Connection, folder: Path, name: str, config: dict[str, Any] | None,
                    metric: str | None) -> None:
    """Raise the one-line StoreError if the recorded editor spec (or metric) differs from the one asked for
    (``config`` None: the name only); inside a transaction."""
    spec = editor_spec(conn)
    if spec is None:  # keyed edits made without an editor: their metric may not change
        if conn.execute("SELECT COUNT(*) FROM edits WHERE key IS NOT NULL").fetchone()[0]:
            _metric_clash(conn, folder, name, metric, " (use a new store)")
        return
    have_name, have_cfg = spec[0], spec[1] or {}
    diff = config_diff(have_cfg, config) if config is not None else []
    if have_name != name or diff:
        n = int(conn.execute("SELECT COUNT(*) FROM edits").fetchone()[0])
        shown = {k: have_cfg[k] for k in diff} if have_name == name else have_cfg
        asked = {k: config[k] for k in diff} if have_name == name and config is not None else (config or {})
        raise StoreError(
            f"edit store {folder} holds {n} {have_name!r} edits with config {json.dumps(shown, sort_keys=True)}; "
            f"it cannot take {name!r} edits with config {json.dumps(asked, sort_keys=True)}; use a new store"
        )
    _metric_clash(conn, folder, name, metric, "; use a new store")


def claim_editor(conn: sqlite3.Connection, folder: Path, name: str, config: dict[str, Any] | None,
                 metric: str | None) -> bool:
    """Inside a write transaction: record ``name``/``config`` (and ``metric``) if the store has no editor yet
    (returns True), else check them against the recorded ones (``editor_conflict``; returns False). ``config``
    None checks the name only (``set_editor``'s callers pass a partial config)."""
    if get_meta(conn, "editor") is not None:
        if config is not None:
            editor_conflict(conn, folder, name, config, metric)
        return False
    editor_conflict(conn, folder, name, None, metric)
    set_meta(conn, "editor", json.dumps({"name": name, "config": config or {}}, sort_keys=True))
    if metric is not None and get_meta(conn, "metric") != metric:
        set_meta(conn, "metric", metric)
    return True


def check_model(folder: Path, stored: str, identity: dict[str, str]) -> None:
    """Refuse a model whose weights are not those of the recorded identity (``stored``, its JSON)."""
    have = json.loads(stored)
    if have.get("weights_sha256") != identity.get("weights_sha256"):
        raise StoreError(
            f"edit store {folder} was made for model {have.get('name')!r} "
            f"(weights sha256 {str(have.get('weights_sha256'))[:12]}…), not for {identity.get('name')!r} "
            f"(weights sha256 {str(identity.get('weights_sha256'))[:12]}…); use the model it was made for"
        )
