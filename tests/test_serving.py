"""``lifelong serve`` end to end: a real uvicorn server on a free loopback port, the official ``openai`` client and
httpx, on a tiny random Llama with SoLA (the plumbing, not the model's knowledge). One model and one server per
module; every test leaves the store with no edit in force."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main
from lifelong.editing.session import EditSession
from lifelong.platform.errors import UserError
from lifelong.serving.server import BackgroundServer, ServerOptions, build_app, check_security

TOKEN = "test-token-123"
SOLA = {"layers": [1], "modules": ["self_attn.o_proj", "mlp.down_proj"], "max_steps": 30, "lr": 0.05}
PROMPT, TARGET = "The capital of Australia is", "Canberra"
TINY_SET = ["--set", "layers=[1]", "--set", "modules=[self_attn.o_proj,mlp.down_proj]", "--set", "max_steps=30",
            "--set", "lr=0.05"]


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):  # noqa: F811
    store = tmp_path_factory.mktemp("serve") / "store"
    session = EditSession(store, model=str(tiny_llama), editor="sola", editor_config=SOLA, quiet=True)
    app = build_app(session, ServerOptions(token=TOKEN, max_tokens_limit=64, max_body_bytes=4096, body_timeout_s=2.0))
    server = BackgroundServer(app).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, timeout=120, max_retries=0)
    yield {"server": server, "session": session, "client": client, "url": server.url, "store": store,
           "model": session.model_name, "tiny": tiny_llama}
    server.stop()
    session.close()


def _complete(s, prompt=PROMPT, **kw):
    kw = {"max_tokens": 6, "temperature": 0, **kw}
    return s["client"].completions.create(model=s["model"], prompt=prompt, **kw).choices[0]


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def _rollback_all(s):
    for row in httpx.get(s["url"] + "/v1/edits").json()["data"]:
        if row["status"] == "active":
            httpx.delete(f"{s['url']}/v1/edits/{row['id']}", headers=_auth(), timeout=60)


def test_completions_chat_stream_and_models(served):
    s = served
    assert [m.id for m in s["client"].models.list().data] == [s["model"]]
    c = _complete(s)
    assert c.finish_reason == "length" and c.text
    streamed = list(s["client"].completions.create(model=s["model"], prompt=PROMPT, max_tokens=6, temperature=0,
                                                   stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == c.text
    assert streamed[-1].choices[0].finish_reason == "length"
    chat = s["client"].chat.completions.create(model=s["model"], messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=5, temperature=0)
    text = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    chunks = list(s["client"].chat.completions.create(model=s["model"], messages=[{"role": "user", "content": "Hi"}],
                                                      max_tokens=5, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    # stop strings end the text before them; sampling with a seed is reproducible
    stop_at = c.text.strip()[:2]
    assert stop_at not in _complete(s, stop=[stop_at]).text
    a, b = (_complete(s, temperature=0.9, seed=7).text for _ in range(2))
    assert a == b


def test_edit_over_http_changes_then_rollback_restores_exactly(served):
    s = served
    before = _complete(s, max_tokens=8)
    r = httpx.post(s["url"] + "/v1/edits", json={"prompt": PROMPT, "target": TARGET}, headers=_auth(), timeout=120)
    assert r.status_code == 201, r.text
    edit_id = r.json()["data"][0]["id"]
    after = _complete(s, max_tokens=8)
    assert after.text.startswith(" " + TARGET) and after.model_extra["edit_id"] == edit_id
    listed = {e["id"]: e for e in httpx.get(s["url"] + "/v1/edits").json()["data"]}
    assert listed[edit_id]["status"] == "active" and listed[edit_id]["in_force"]
    r = httpx.delete(f"{s['url']}/v1/edits/{edit_id}", headers=_auth(), timeout=60)
    assert r.status_code == 200 and r.json()["rolled_back"] is True
    restored = _complete(s, max_tokens=8)
    assert restored.text == before.text and restored.model_extra["edit_id"] is None
    again = httpx.delete(f"{s['url']}/v1/edits/{edit_id}", headers=_auth())
    assert again.json()["already_rolled_back"] is True


def test_wrong_or_missing_token_is_401_and_writes_nothing(served):
    s = served
    version = s["session"].store.version()
    n = len(s["session"].store.all_edits())
    for headers in ({}, _auth("wrong-token-xyz"), {"Authorization": "Basic abc"}):
        r = httpx.post(s["url"] + "/v1/edits", json={"prompt": PROMPT, "target": TARGET}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.delete(s["url"] + "/v1/edits/1", headers=headers).status_code == 401
    assert s["session"].store.version() == version and len(s["session"].store.all_edits()) == n


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"prompt": "x"}, 400, "model"),
    ("/v1/completions", {"model": None, "prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"model": None, "prompt": "x", "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/completions", {"model": None, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": None, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": None, "prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"model": None, "prompt": "x" * 5000}, 413, None),
    ("/v1/chat/completions", {"model": None, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": None, "messages": [{"role": "robot", "content": "x"}]}, 400, None),
    ("/v1/edits", {"prompt": "x"}, 400, "body.target"),
    ("/v1/edits", [{"prompt": "x", "target": "y"}, {"prompt": "x", "target": " "}], 400, "edits[1].target"),
    ("/v1/edits", {"prompt": "x", "target": "y", "colour": "red"}, 400, "body.colour"),
    ("/v1/edits", b"[", 400, None),
    # hardening: a seed torch cannot take, lone surrogates (JSON can escape them), a NUL in a later edit of a list
    ("/v1/completions", {"model": None, "prompt": "x", "seed": 10**30}, 400, "seed"),
    ("/v1/completions", {"model": None, "prompt": "a\ud800b"}, 400, "prompt"),
    ("/v1/chat/completions", {"model": None, "messages": [{"role": "user", "content": "\udfff"}]}, 400, "messages"),
    ("/v1/edits", {"prompt": "x\ud800", "target": "y"}, 400, "body.prompt"),
    ("/v1/edits", [{"prompt": "The sky is", "target": "green"}, {"prompt": "x\u0000", "target": "y"}], 400,
     "edits[1].prompt"),
])
def test_bad_requests_get_openai_errors_and_change_nothing(served, path, body, status, param):
    s = served
    if isinstance(body, dict) and body.get("model", "") is None:
        body = {**body, "model": s["model"]}
    version = s["session"].store.version()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # ASCII: lone surrogates as escapes
    r = httpx.post(s["url"] + path, headers={**_auth(), "Content-Type": "application/json"}, timeout=60,
                   content=content)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] is not None and err["param"].startswith(param.split(".")[0]), err
    assert s["session"].store.version() == version


def test_unknown_edit_and_routes(served):
    s = served
    assert httpx.delete(s["url"] + "/v1/edits/999", headers=_auth()).status_code == 404
    assert httpx.delete(s["url"] + "/v1/edits/abc", headers=_auth()).status_code == 400
    r = httpx.get(s["url"] + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(s["url"] + "/healthz").json()["status"] == "ok"


def _generate_during_an_apply(s) -> None:
    """Three clients generate while an edit is applied over HTTP: every answer is the one before the edit (no
    edit id) or the one after it (its id), never a mix; the edit is rolled back afterwards."""
    before = _complete(s, max_tokens=8).text
    results, stop = [], threading.Event()

    def worker():
        client = openai.OpenAI(base_url=s["url"] + "/v1", api_key=TOKEN, timeout=120, max_retries=0)
        while not stop.is_set():
            c = client.completions.create(model=s["model"], prompt=PROMPT, max_tokens=8, temperature=0).choices[0]
            results.append((c.text, c.model_extra["edit_id"]))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    r = httpx.post(s["url"] + "/v1/edits", json=[{"prompt": PROMPT, "target": TARGET}], headers=_auth(), timeout=120)
    edit_id = r.json()["data"][0]["id"]
    after = _complete(s, max_tokens=8).text
    stop.set()
    for t in threads:
        t.join(60)
    _rollback_all(s)
    assert after != before and results
    for text, eid in results:
        assert (text, eid) in {(before, None), (after, edit_id)}, (text, eid)


def test_generations_during_an_apply_see_before_or_after_never_a_mix(served):
    _generate_during_an_apply(served)


def test_other_writers_are_seen_before_the_next_generation(served, capsys):
    """The CLI and a second server on the same store: one history, each server in step before it generates."""
    s = served
    before = _complete(s, max_tokens=8).text
    store = str(s["store"])
    assert main(["edit", "apply", "--store", store, "--model", str(s["tiny"]), "--prompt", PROMPT,
                 "--target", TARGET, "--json", *TINY_SET]) == 0
    edit_id = json.loads(capsys.readouterr().out)["applied"][0]["id"]
    edited = _complete(s, max_tokens=8)
    assert edited.model_extra["edit_id"] == edit_id and edited.text.startswith(" " + TARGET)
    # a second server on the same store rolls it back; the first one follows
    other = EditSession(store, model=str(s["tiny"]), quiet=True)
    with BackgroundServer(build_app(other, ServerOptions(token=TOKEN))) as srv2:
        assert httpx.delete(f"{srv2.url}/v1/edits/{edit_id}", headers=_auth(), timeout=60).status_code == 200
        assert _complete(s, max_tokens=8).text == before
        r = httpx.post(srv2.url + "/v1/edits", json={"prompt": PROMPT, "target": TARGET}, headers=_auth(), timeout=120)
        eid2 = r.json()["data"][0]["id"]
        assert _complete(s, max_tokens=8).model_extra["edit_id"] == eid2
    other.close()
    assert main(["edit", "rollback", "--store", store, str(eid2)]) == 0
    assert _complete(s, max_tokens=8).text == before
    rows = {r["id"]: r["status"] for r in httpx.get(s["url"] + "/v1/edits").json()["data"]}
    assert rows[edit_id] == rows[eid2] == "rolled_back"


def test_security_rules():
    assert check_security("127.0.0.1", "a-long-token", False) == "a-long-token"
    assert check_security("::1", None, True) is None
    with pytest.raises(UserError, match="needs a token"):
        check_security("127.0.0.1", None, False)
    with pytest.raises(UserError, match="loopback"):
        check_security("0.0.0.0", None, True)
    with pytest.raises(UserError, match="at least 8"):
        check_security("127.0.0.1", "short", False)


@pytest.mark.parametrize("args, message", [
    ([], "needs a token"),
    (["--insecure-no-auth", "--host", "0.0.0.0"], "loopback"),
    (["--token", "long-enough-token", "--port", "0"], "--port"),
    (["--token", "long-enough-token", "--max-tokens", "0"], "--max-tokens"),
    (["--token", "long-enough-token", "--max-batch", "0"], "--max-batch"),
    (["--token", "long-enough-token", "--max-batch", "4", "--batch-wait-ms", "-1"], "--batch-wait-ms"),
    (["--token", "long-enough-token", "--port", "BUSY"], "cannot listen"),
    (["--token", "long-enough-token", "--host", "no-such-host.invalid"], "not an address"),
])
def test_serve_cli_refuses_bad_input_with_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    args = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in args]
    try:
        assert main(["serve", "--store", str(tmp_path / "st"), *args]) == 2
    finally:
        busy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "st").exists()


def test_turns_reads_in_order_writes_first():
    """The engine's lock: waiting writes go before waiting reads, reads in arrival order."""
    import time

    from lifelong.serving.engine import _TurnLock

    lock, order, threads = _TurnLock(threading.RLock()), [], []

    def take(name, write):
        with lock.hold(write=write):
            order.append(name)

    with lock.hold():
        for name, write in [("r0", False), ("r1", False), ("w0", True), ("r2", False), ("w1", True)]:
            threads.append(threading.Thread(target=take, args=(name, write)))
            threads[-1].start()
            time.sleep(0.05)
    for t in threads:
        t.join(10)
    assert order == ["w0", "w1", "r0", "r1", "r2"]


def test_chunked_body_over_the_limit_is_413_and_writes_nothing(served):
    s = served
    version = s["session"].store.version()

    def body():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'", "target": "y"}'

    r = httpx.post(s["url"] + "/v1/edits", content=body(), headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert s["session"].store.version() == version


def test_chat_without_max_tokens_runs_to_the_limit_or_the_end(served):
    s = served
    r = httpx.post(s["url"] + "/v1/chat/completions", timeout=120, json={
        "model": s["model"], "messages": [{"role": "user", "content": "Hi"}], "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 64  # the module's server limit
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}


def test_a_client_that_leaves_a_stream_does_not_block_the_server(served):
    s = served
    body = {"model": s["model"], "prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True}
    with httpx.stream("POST", s["url"] + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in r.iter_lines() if line)
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "text_completion"
    assert _complete(s).text  # the next request is served
    with httpx.stream("POST", s["url"] + "/v1/completions", json={**body, "max_tokens": 3}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------------------------------------- dynamic batching
PROMPTS = [PROMPT, "Hello", "The Night Watch was painted by the Dutch master", "Water boils at"]


@pytest.fixture(scope="module")
def batched(served):
    """A second server on the same session with dynamic batching (up to 4, a long wait so concurrent requests
    meet in one batch)."""
    app = build_app(served["session"], ServerOptions(token=TOKEN, max_tokens_limit=64, max_batch=4,
                                                     batch_wait_ms=300))
    with BackgroundServer(app) as server:
        yield {**served, "url": server.url, "app": app,
               "client": openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, timeout=120, max_retries=0)}


def test_a_batch_gives_each_request_its_batch_1_output_token_for_token(served):
    """Left-padded prompts of different lengths, one routed to an edit, with their own max_tokens and stop
    strings, generated together: each row is what it is alone (tokens, text, finish_reason, edit_id)."""
    from lifelong.serving.engine import Engine, GenParams, _Job

    s = served
    r = httpx.post(s["url"] + "/v1/edits", json={"prompt": PROMPT, "target": TARGET}, headers=_auth(), timeout=120)
    edit_id = r.json()["data"][0]["id"]
    try:
        engine = Engine(s["session"], max_tokens_limit=64)
        full = GenParams(max_tokens=12, temperature=0)
        full = engine.generate(engine.encode(PROMPTS[2], full), full).text
        params = [GenParams(max_tokens=n, temperature=0, stop=stop)
                  for n, stop in [(8, []), (5, []), (12, [full[len(full) // 2:][:2]]), (8, [])]]
        jobs = [_Job(engine.encode(p, g), g) for p, g in zip(PROMPTS, params)]
        alone = [engine._run([j])[0] for j in jobs]
        together = engine._run(jobs)
        assert [g.tokens for g in together] == [g.tokens for g in alone]
        assert [(g.text, g.finish_reason, g.edit_id) for g in together] == \
            [(g.text, g.finish_reason, g.edit_id) for g in alone]
        assert together[0].edit_id == edit_id and together[0].text.startswith(" " + TARGET)
        assert together[1].edit_id is None and together[2].finish_reason == "stop"
        assert engine.largest_batch == 4
    finally:
        _rollback_all(s)


def test_batching_server_answers_concurrent_clients_as_batch_1_does(batched, served):
    s = batched
    want = {p: _complete(served, p, max_tokens=7).text for p in PROMPTS}
    got, errors = {}, []

    def ask(p):
        try:
            if p == "Hello":  # a stream in the batch
                chunks = s["client"].completions.create(model=s["model"], prompt=p, max_tokens=7, temperature=0,
                                                        stream=True)
                got[p] = "".join(c.choices[0].text for c in chunks)
            else:
                got[p] = _complete(s, p, max_tokens=7).text
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and got == want
    health = httpx.get(s["url"] + "/healthz").json()
    assert health["max_batch"] == 4 and health["largest_batch"] >= 2


def test_batched_generations_during_an_apply_see_one_store_version(batched):
    _generate_during_an_apply(batched)
    assert httpx.get(batched["url"] + "/healthz").json()["largest_batch"] >= 2


# ---------------------------------------------------------------------------------------------- OpenAI fields
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("kind, field, value", [
    ("completions", "logprobs", 2), ("completions", "echo", True), ("completions", "presence_penalty", 0.5),
    ("completions", "frequency_penalty", -1.0), ("completions", "logit_bias", {"42": -100}),
    ("completions", "best_of", 3), ("completions", "n", 2), ("completions", "suffix", " end"),
    ("chat", "tools", [TOOL]), ("chat", "logprobs", True), ("chat", "top_logprobs", 2),
    ("chat", "response_format", {"type": "json_object"}), ("chat", "tool_choice", "required"),
    ("chat", "n", 3), ("chat", "presence_penalty", 1),
])
def test_unsupported_openai_fields_are_refused_by_name(served, kind, field, value):
    s = served
    generations = httpx.get(s["url"] + "/healthz").json()["generations"]
    with pytest.raises(openai.BadRequestError) as err:
        if kind == "completions":
            s["client"].completions.create(model=s["model"], prompt=PROMPT, max_tokens=3, **{field: value})
        else:
            s["client"].chat.completions.create(model=s["model"], messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=3, **{field: value})
    e = err.value
    assert e.status_code == 400 and e.param == field and e.code == "unsupported_parameter", e
    assert field in e.message and "supported: model" in e.message
    assert httpx.get(s["url"] + "/healthz").json()["generations"] == generations  # refused before generating


def test_unknown_fields_are_refused_and_neutral_values_accepted(served):
    s = served
    with pytest.raises(openai.BadRequestError) as err:
        s["client"].completions.create(model=s["model"], prompt=PROMPT, max_tokens=3, extra_body={"top_k": 5})
    assert err.value.param == "top_k" and err.value.code == "unknown_parameter"
    plain = _complete(s).text
    neutral = _complete(s, presence_penalty=0, frequency_penalty=0.0, n=1, logprobs=None, echo=False, best_of=1,
                        logit_bias={}, suffix=None, user="someone")
    assert neutral.text == plain
    msgs = [{"role": "user", "content": "Hi"}]
    chat = s["client"].chat.completions.create(model=s["model"], messages=msgs, max_tokens=4, temperature=0)
    neutral = s["client"].chat.completions.create(
        model=s["model"], messages=msgs, max_tokens=4, temperature=0, n=1, logprobs=False, presence_penalty=0,
        response_format={"type": "text"}, tool_choice="none", parallel_tool_calls=False, store=False, user="u")
    assert neutral.choices[0].message.content == chat.choices[0].message.content
    # stream_options: include_usage gives a last chunk with the usage and no choices
    chunks = list(s["client"].chat.completions.create(model=s["model"], messages=msgs, max_tokens=4, temperature=0,
                                                      stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == chat.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        s["client"].completions.create(model=s["model"], prompt=PROMPT, max_tokens=3,
                                       stream_options={"include_usage": True})
    assert err.value.param == "stream_options"


def test_a_batch_stays_within_the_context(served):
    """Rows of a batch run as long as the longest max_tokens from the padded width: a job that would push the
    batch past the model's context (64 for the tiny Llama) waits for the next batch."""
    from lifelong.serving.engine import Engine, GenParams, _Job

    engine = Engine(served["session"], max_batch=4)
    long, short, other = (_Job([5] * 50, GenParams(max_tokens=10, temperature=0)),
                          _Job([5] * 5, GenParams(max_tokens=30, temperature=0)),
                          _Job([5] * 8, GenParams(max_tokens=12, temperature=0)))
    sampled = _Job([5] * 8, GenParams(max_tokens=4, temperature=0.7))
    engine._batcher._queue[:] = [long, sampled, short, other]
    assert engine._batcher._compatible(long) == [long, other]
    engine._batcher._queue[:] = [short, long, sampled, other]
    assert engine._batcher._compatible(short) == [short, other]


def test_edit_ids_take_ascii_digits_only(served):
    r = httpx.delete(served["url"] + "/v1/edits/\u00b2", headers=_auth(), timeout=60)  # "²".isdigit() is True
    assert r.status_code == 400 and r.json()["error"]["param"] == "id", r.text


def test_a_half_sent_body_is_timed_out_with_408(served):
    """A client that announces a body and sends half of it gets 408 once the body timeout passes (2 s here),
    instead of holding the connection and a worker for ever."""
    import socket
    import time

    host, port = served["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/edits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        start = time.monotonic()
        reply = conn.recv(4096).decode()
        waited = time.monotonic() - start
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert 1.5 <= waited < 20, waited


def test_a_rollback_does_not_queue_behind_waiting_generations(served):
    """Sixty completions wait for the session (a generation is in progress: this test holds the session's lock);
    they hold the server's worker threads, more than its pool of 40. A rollback then sent is a write: it goes
    first once the generation in progress ends, so at most a couple of the sixty finish before it is answered
    (before the write endpoints had threads of their own, it queued for a worker thread behind the waiting
    generations, and the test failed)."""
    import time

    s = served
    session, gate, held = s["session"], threading.Event(), threading.Event()
    finished: list[float] = []

    def hold_lock():
        with session.lock:
            held.set()
            gate.wait(60)

    def complete():
        httpx.post(s["url"] + "/v1/completions", json={"model": s["model"], "prompt": "Hi", "max_tokens": 2},
                   timeout=180)
        finished.append(time.monotonic())

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert held.wait(10)
    clients = [threading.Thread(target=complete) for _ in range(60)]
    for c in clients:
        c.start()
    time.sleep(2.0)  # every client connected and waiting
    answer = {}
    writer = threading.Thread(target=lambda: answer.update(
        r=httpx.delete(s["url"] + "/v1/edits/999999", headers=_auth(), timeout=180), t=time.monotonic()))
    writer.start()
    time.sleep(1.0)  # the rollback is queued too
    gate.set()
    for thread in (holder, writer, *clients):
        thread.join()
    assert answer["r"].status_code == 404, answer["r"].text  # no such edit: still a write, through the turn lock
    before = sum(1 for t in finished if t < answer["t"])
    assert len(finished) == 60 and before <= 3, before


def test_a_served_new_store_is_claimed_so_a_racing_apply_with_another_editor_is_refused(served, capsys):
    """The server claims the store's editor (sola, with its config) when it starts, before any edit: an `edit
    apply --editor grace` on the same store is refused in one line (exit 2) instead of fixing the store to grace
    under the server, which then answered every request with a 500; the server keeps serving."""
    s = served
    rc = main(["edit", "apply", "--store", str(s["store"]), "--model", str(s["tiny"]), "--editor", "grace",
               "--set", "layer=1", "--set", "max_steps=30", "--prompt", "The sky is", "--target", "green",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "sola" in err, err
    assert s["session"].store.editor_spec()[0] == "sola"
    assert _complete(s).finish_reason == "length"
