"""Hypothesis fuzzing of the tool's outer surfaces (issue 33's campaign, second part): the arguments of every CLI
command, the server's request bodies, PEFT adapter folders and saved reward-model folders.

The properties: a command line is answered with exit 0, or exit 2 and one ``error:`` line, never a traceback; a
request gets a 2xx or a 4xx with OpenAI's error object, never a 5xx; a folder is read or refused with one
``UserError`` line. The example budget is small here (``LIFELONG_FUZZ_EXAMPLES``, default 40, a quarter of it for
the slower CLI and server properties); ``bench/fuzz_inputs.py`` runs these and tests/test_fuzz_inputs.py's with a
large one.

Each command line runs in a forked child; one that passes its checks and starts its real work (training, loading
a model) is killed after ``WORK_S`` seconds and counted as accepted: the property is about what happens before
the work, and the work has its own tests. ``serve`` (it would not return), ``demo`` (it runs every other command) and
``compare --jobs`` (worker processes of their own) are left out; the server's bodies are fuzzed through
FastAPI's TestClient instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from _llm_fixtures import tiny_llama  # noqa: F401
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lifelong.cli.main import build_parser
from lifelong.platform.errors import UserError

BUDGET = int(os.environ.get("LIFELONG_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=BUDGET, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_FUZZ = settings(max_examples=max(5, BUDGET // 4), deadline=None, suppress_health_check=list(HealthCheck))
WORK_S = float(os.environ.get("LIFELONG_FUZZ_WORK_S", "1.0"))
LEFT_OUT = {("serve",), ("demo",)}
LEFT_OUT_OPTIONS = {"--jobs"}


def _leaf_commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command of the parser with its own sub-parser (``edit apply``, ``run``, ...)."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
                return
        if path not in LEFT_OUT:
            out.append((path, parser))

    walk(build_parser(), ())
    return out


COMMANDS = _leaf_commands()
# values a user could type: numbers out of range, paths that are missing, files, folders, option-like words,
# bytes that are not UTF-8 (Python hands them over as lone surrogates), long and odd text; never NUL (no argv has it)
_VALUES = st.one_of(
    st.sampled_from(["", " ", "0", "-1", "1", "3", "1e309", "nan", "-inf", "99999999999999999999", "0x10", "1.5",
                     "missing", "missing/deeper/x", "file.txt", "data.jsonl", "folder", "folder/new", ".", "-",
                     "--json", "a\udcff", "\udced\udca0\udc80", "naive", "sola", "grace", "split-digits", "mlp",
                     "smollm2-135m", "http://127.0.0.1:9", "ftp://x", "key=value", "epochs=1", "[1,2", "x" * 3000,
                     "\x1b[31mred", "line\nbreak"]),
    st.text(st.characters(exclude_characters="\x00"), max_size=16),
)


@st.composite
def _argv(draw) -> list[str]:
    path, parser = draw(st.sampled_from(COMMANDS))
    argv = list(path)
    for action in parser._actions:
        if action.dest == "help" or not action.option_strings and action.nargs == 0:
            continue
        if action.option_strings and action.option_strings[0] in LEFT_OUT_OPTIONS:
            continue
        if not action.option_strings:  # a positional: always given, one or two values
            argv += draw(st.lists(_VALUES, min_size=1, max_size=2 if action.nargs in ("+", "*") else 1))
            continue
        if not action.required and not draw(st.booleans()):
            continue
        if action.nargs == 0:  # a flag
            argv.append(action.option_strings[0])
        elif action.choices and draw(st.booleans()):
            argv += [action.option_strings[0], str(draw(st.sampled_from(list(action.choices))))]
        else:
            argv += [action.option_strings[0], draw(_VALUES)]
    return argv


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """A working folder with a text file, a JSON Lines file and a folder, which the drawn values name."""
    root = tmp_path_factory.mktemp("argv")
    (root / "file.txt").write_text("not a config: [\n")
    (root / "data.jsonl").write_text('{"prompt": "a", "target": "b"}\n{"x": 1}\n')
    (root / "folder").mkdir()
    return root


def _run_forked(argv: list[str], cwd: Path, seconds: float) -> tuple[int | None, str]:
    """``lifelong ARGV`` in a forked child (the modules already imported come with it, so it starts at once):
    ``(exit code, stderr)``, or ``(None, "")`` when it was still working after ``seconds`` (then killed). A child
    keeps whatever a stopped command leaves half done (a module half imported, a lock) away from the next case."""
    import io
    import select
    import time
    import traceback

    from lifelong.cli.main import main

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the command, send its exit code and stderr, leave without cleanup
        try:
            os.close(read_end)
            os.chdir(cwd)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(argv)
                except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:  # noqa: BLE001 - an escaped exception is what the property looks for
                    code = 99
                    traceback.print_exc(file=err)
            with os.fdopen(write_end, "wb") as out:
                out.write(json.dumps({"code": code, "err": err.getvalue()}).encode("utf-8", "surrogatepass"))
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + seconds
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, ""
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks).decode("utf-8", "surrogatepass"))
    return answer["code"], answer["err"]


@SLOW_FUZZ
@given(argv=_argv())
def test_every_command_answers_any_arguments_with_one_line_or_success(playground, argv) -> None:
    code, err = _run_forked(argv, playground, WORK_S)
    if code is None:
        event("still working after WORK_S: accepted")
        return
    event(f"exit {code}")
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], (argv, err)


# ------------------------------------------------------------------------------------ the server's bodies
_json_leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
_FIELDS = {
    "/v1/completions": ["model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n",
                        "logprobs", "echo", "user"],
    "/v1/chat/completions": ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed",
                             "stream", "stop", "tools"],
    "/v1/edits": ["edits", "prompt", "target", "id"],
}
_VALID = {"/v1/completions": {"model": "MODEL", "prompt": "The capital of", "max_tokens": 2},
          "/v1/chat/completions": {"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
          "/v1/edits": {"prompt": "The capital of Peru is", "target": " Lima"}}
_field_value = st.one_of(_json, st.sampled_from(["tiny", "The capital of", "a\ud800", "\x00", 4, 0, -1, 10**30,
                                                  [{"role": "user", "content": "hi"}], [{"role": "x"}],
                                                  [{"prompt": "p", "target": "t"}], [{"prompt": "p\ud800"}]]))


@st.composite
def _request(draw) -> tuple[str, str, bytes | None, bool]:
    method = draw(st.sampled_from(["POST", "POST", "POST", "DELETE", "GET"]))
    if method == "DELETE":
        ident = draw(st.one_of(st.text(st.characters(exclude_characters="/?#%", exclude_categories=("Cs", "Cc")),
                                       min_size=1, max_size=8),
                               st.integers(-5, 2**70).map(str), st.just("²")))
        return method, f"/v1/edits/{ident}", None, draw(st.booleans())
    if method == "GET":
        return method, draw(st.sampled_from(["/v1/edits", "/v1/models", "/healthz", "/v1/nothing"])), None, True
    path = draw(st.sampled_from(list(_FIELDS)))
    kind = draw(st.sampled_from(["near-valid", "near-valid", "fields", "fields", "json", "bytes"]))
    if kind == "near-valid":  # a valid body with at most one field changed: requests that reach the work
        obj = dict(_VALID[path])
        if draw(st.booleans()):
            obj[draw(st.sampled_from(_FIELDS[path]))] = draw(_field_value)
        body = json.dumps(obj).encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "json":
        body = json.dumps(draw(_json)).encode()
    else:
        obj = {k: draw(_field_value) for k in draw(st.lists(st.sampled_from(_FIELDS[path]), max_size=5, unique=True))}
        if "model" in obj and draw(st.booleans()):
            obj["model"] = "MODEL"
        if obj.get("max_tokens") is not None and draw(st.booleans()):
            obj["max_tokens"] = 2
        body = json.dumps(obj).encode("utf-8", "surrogatepass")
    return method, path, body, draw(st.booleans())


@pytest.fixture(scope="module")
def server_client(tiny_llama, tmp_path_factory):  # noqa: F811
    from fastapi.testclient import TestClient

    from lifelong.editing.session import EditSession
    from lifelong.serving.server import ServerOptions, build_app

    session = EditSession(tmp_path_factory.mktemp("fuzz-serve") / "store", model=str(tiny_llama), editor="sola",
                          editor_config={"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 2}, quiet=True)
    app = build_app(session, ServerOptions(token="fuzz", max_tokens_limit=8, max_body_bytes=4096))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, session.model_name
    session.close()


@SLOW_FUZZ
@given(request=_request())
def test_the_server_answers_any_request_body_with_2xx_or_4xx(server_client, request) -> None:
    client, model = server_client
    method, path, body, authorised = request
    if body is not None:
        body = body.replace(b'"MODEL"', json.dumps(model).encode())
    headers = {"Authorization": "Bearer fuzz" if authorised else "Bearer wrong", "Content-Type": "application/json"}
    r = client.request(method, path, content=body, headers=headers)
    event(f"status {r.status_code}")
    assert r.status_code < 500, (method, path, body, r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], r.text


# ------------------------------------------------------------------------------------ PEFT adapter folders
@pytest.fixture(scope="module")
def sola_store(tmp_path_factory):
    """A SoLA store (rank 4 on two modules of layer 1), written without a model: what ``edit import`` checks."""
    from lifelong.editing.store import EditStore

    path = tmp_path_factory.mktemp("fuzz-peft") / "store"
    with EditStore.open(path, model_identity={"name": "m", "weights_sha256": "a" * 64}) as st:
        st.set_editor("sola", {"layers": [1], "modules": ["self_attn.o_proj", "mlp.down_proj"], "rank": 4,
                               "alpha": 8.0}, "ip")
        st.set_model_name("m")
    return path


_GOOD_PEFT = {"peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "base_model_name_or_path": "m", "bias": "none",
              "target_modules": ["model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"],
              "task_type": "CAUSAL_LM", "fan_in_fan_out": False, "lora_dropout": 0.0}


@st.composite
def _peft_folder(draw) -> tuple[dict | str, bytes]:
    config: dict | str = dict(_GOOD_PEFT)
    for key in draw(st.lists(st.sampled_from([*_GOOD_PEFT, "use_dora", "layers_to_transform"]), max_size=3)):
        if draw(st.booleans()):
            config.pop(key, None)
        else:
            config[key] = draw(_field_value)
    if draw(st.integers(0, 9)) == 0:
        config = draw(st.sampled_from(["[" * 50_000 + "]" * 50_000, "{", '{"r": 1e999}', "null", "\xff"]))
    from safetensors.torch import save

    tensors = {f"base_model.model.model.layers.1.{m}.lora_{ab}.weight": torch.randn(shape)
               for m, (i, o) in {"self_attn.o_proj": (64, 64), "mlp.down_proj": (128, 64)}.items()
               for ab, shape in (("A", (4, i)), ("B", (o, 4)))}
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(tensors)))
        tensors[name].view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
    raw = bytearray(save(tensors))
    for _ in range(draw(st.integers(0, 3))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return config, bytes(raw if cut is None else raw[:cut])


@FUZZ
@given(folder=_peft_folder(), into_store=st.booleans(), allow_other=st.booleans())
def test_peft_adapter_folders_are_read_or_refused_in_one_line(tmp_path_factory, sola_store, folder, into_store,
                                                              allow_other) -> None:
    from lifelong.editing.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_import

    config, weights = folder
    adapter = tmp_path_factory.mktemp("adapter")
    text = config if isinstance(config, str) else json.dumps(config, allow_nan=True)
    (adapter / ADAPTER_CONFIG).write_bytes(text.encode("utf-8", "surrogateescape"))
    (adapter / ADAPTER_WEIGHTS).write_bytes(weights)
    store = sola_store if into_store else adapter / "new-store"
    try:
        check_import(store, adapter, "m", allow_other_base=allow_other)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


# ------------------------------------------------------------------------------------ reward-model folders
@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory) -> Path:
    from lifelong.platform.registry import create
    from lifelong.scorers.reward_model import RewardHead

    rm = create("scorer", "scalar-rm", cache_dir=":memory:", device="cpu", hidden=4)
    torch.manual_seed(0)
    rm.head = RewardHead(384, {}, 4, 0.0)
    return rm.save(tmp_path_factory.mktemp("fuzz-rm") / "rm")


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(["scorer", "format_version", "config", "branches", "embed_dim",
                                                 "head_sha256", "training", "base_model", "config.hidden",
                                                 "config.branches", "config.device", "config.backbone"]),
                                st.one_of(st.just("<delete>"), _field_value)), max_size=3),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 4000)), allow=st.booleans())
def test_reward_model_folders_are_loaded_or_refused_in_one_line(tmp_path_factory, reward_folder, edits, flips, cut,
                                                                allow) -> None:
    from lifelong.scorers.base import load_scorer

    folder = tmp_path_factory.mktemp("rm") / "rm"
    folder.mkdir()
    meta = json.loads((reward_folder / "config.json").read_text())
    for key, value in edits:
        target, name = (meta.setdefault("config", {}), key.split(".", 1)[1]) if key.startswith("config.") else \
            (meta, key)
        if not isinstance(target, dict):
            continue
        if value == "<delete>":
            target.pop(name, None)
        elif name != "backbone" or value != "lm":  # the lm backbone loads SmolLM2: its own tests cover it
            target[name] = value
    (folder / "config.json").write_text(json.dumps(meta, allow_nan=True), encoding="utf-8", errors="surrogatepass")
    head = bytearray((reward_folder / "head.safetensors").read_bytes())
    for at, byte in flips:
        head[at % len(head)] = byte
    (folder / "head.safetensors").write_bytes(bytes(head if cut is None else head[:cut]))
    try:
        model = load_scorer(folder, allow_unverified=allow, device="cpu")
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)
        return
    head_state = getattr(model, "head", None)
    if head_state is not None:  # what loaded is finite: a NaN head is refused, not scored
        assert all(bool(torch.isfinite(v).all()) for v in head_state.state_dict().values() if v.is_floating_point())
