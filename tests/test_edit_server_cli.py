"""``lifelong edit apply|list|generate|rollback --server URL`` against a real ``lifelong serve`` (uvicorn on a free
loopback port, a tiny Llama): the commands load no model, see the server's store, give what the local commands give,
and every failure is one line."""

from __future__ import annotations

import json
import socket

import pytest
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main
from lifelong.editing.session import EditSession
from lifelong.serving.server import BackgroundServer, ServerOptions, build_app

TOKEN = "test-token-123"
SOLA = {"layers": [1], "modules": ["self_attn.o_proj", "mlp.down_proj"], "max_steps": 30, "lr": 0.05}
PROMPT, TARGET = "The capital of Australia is", "Canberra"


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):  # noqa: F811
    store = tmp_path_factory.mktemp("serve") / "store"
    session = EditSession(store, model=str(tiny_llama), editor="sola", editor_config=SOLA, quiet=True)
    running = BackgroundServer(build_app(session, ServerOptions(token=TOKEN, max_tokens_limit=64))).start()
    yield {"url": running.url, "store": store, "model": tiny_llama}
    running.stop()
    session.close()


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lifelong: error: "), lines
    return lines[0]


def test_apply_list_generate_rollback_through_a_running_server(capsys, server, tmp_path, monkeypatch):
    import lifelong.adapters.lm.model_loading as loading
    import lifelong.editing.session as session_module

    def no_load(*args, **kwargs):
        raise AssertionError("a --server command loaded a model")

    monkeypatch.setattr(loading, "load_causal_lm", no_load)
    monkeypatch.setattr(session_module, "load_causal_lm", no_load)
    url = server["url"]
    code, out, err = _run(capsys, "edit", "apply", "--server", url, "--token", TOKEN, "--prompt", PROMPT,
                          "--target", TARGET, "--json")
    assert code == 0, err
    (applied,) = json.loads(out)["applied"]
    assert applied["prompt"] == PROMPT and applied["target"] == TARGET and "[1/1] edit" in err

    code, out, _ = _run(capsys, "edit", "list", "--server", url, "--json")
    assert [(r["id"], r["status"]) for r in json.loads(out)] == [(applied["id"], "active")]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\nCats like to\n")
    code, out, err = _run(capsys, "edit", "generate", "--server", url, "--file", str(prompts),
                          "--max-new-tokens", "3")
    assert code == 0, err
    remote = [json.loads(line) for line in out.splitlines()]  # --file prints JSON Lines, as its help says
    assert remote[0]["edit_id"] == applied["id"] and remote[0]["completion"].startswith(" Canberra")
    monkeypatch.undo()
    code, out, err = _run(capsys, "edit", "generate", "--store", str(server["store"]), "--model",
                          str(server["model"]), "--file", str(prompts), "--max-new-tokens", "3")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == remote  # the local command gives the same

    code, out, err = _run(capsys, "edit", "rollback", "--server", url, "--token", TOKEN, str(applied["id"]), "--json")
    assert code == 0, err
    assert json.loads(out) == {"rolled_back": [applied["id"]], "already_rolled_back": []}
    code, out, _ = _run(capsys, "edit", "list", "--server", url)
    assert "rolled_back" in out


def test_server_failures_are_one_line(capsys, server, monkeypatch):
    monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
    url = server["url"]
    code, _, err = _run(capsys, "edit", "apply", "--server", url, "--prompt", PROMPT, "--target", "Sydney")
    assert code == 2 and "refused the token (401" in _one_line(err)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = _run(capsys, "edit", "list", "--server", closed)
    assert code == 2 and "cannot reach it" in _one_line(err)
    code, _, err = _run(capsys, "edit", "apply", "--server", url, "--store", "x", "--prompt", PROMPT, "--target", "y")
    assert code == 2 and "--store does not go with --server" in _one_line(err)
    code, _, err = _run(capsys, "edit", "rollback", "--server", url, "--token", TOKEN, "999")
    assert code == 2 and "no edit with id 999" in _one_line(err)
    code, _, err = _run(capsys, "edit", "list")
    assert code == 2 and "needs --store DIR (or --server URL" in _one_line(err)
    code, _, err = _run(capsys, "edit", "list", "--server", "127.0.0.1:8000")
    assert code == 2 and "expected an http:// or https:// URL" in _one_line(err)
