"""The serving engine: one ``EditSession`` (the model loaded once, the store's edits in force) behind the HTTP API.

Every model operation holds the session's lock (``EditSession.lock``, see ``editing/session.py``): generations
run one at a time (batch 1, no dynamic batching), an apply or rollback waits for the generation in progress and
the next generation waits for it, so a generation sees the edits before an apply or after it, never half of
one. The engine takes that lock through ``_TurnLock``: generations in arrival order, a waiting write (apply,
rollback) ahead of the waiting generations, so a write waits for the generation in progress only and no request
waits for more than those queued before it. Before each generation and each listing the engine calls ``session.sync()``, so edits applied or rolled
back by another writer (the CLI, a second server on the same store) are in force for the next request; the
check is one read of the store's change counter.

Generation: the prompt is tokenised without special tokens (as ``lifelong edit generate`` does, so the server's
greedy output is the CLI's), the routing decision is taken at the last prompt token and holds for the generated
tokens; ``temperature`` 0 is greedy, above 0 samples (``top_p``, ``seed``); ``stop`` strings end the text
before them; ``max_tokens`` is capped by the server's limit and by the model's context.
"""

from __future__ import annotations

import collections
import contextlib
import math
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from lifelong.editing.session import EditSession


class RequestError(Exception):
    """A bad request: becomes an OpenAI-style error body with a 4xx status."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type


@dataclass
class GenParams:
    max_tokens: int | None = 16  # None: as many as the server's limit and the context allow (chat's default)
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str
    edit_id: int | None


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _Streamer:
    """transformers streamer: new token ids go to a queue (None ends it); ``cancel`` stops the generation."""

    def __init__(self) -> None:
        self.queue: "queue.Queue[Any]" = queue.Queue()
        self.cancelled = threading.Event()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() hands the prompt first
            self._prompt_seen = True
            return
        self.queue.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass  # the engine puts the final Generation (or the error) itself


class _TurnLock:
    """Mutual exclusion over the session, in turns: reads (generations, listings) in arrival order, a write (apply,
    rollback) ahead of every waiting read, after the writes already waiting. So a write waits for the holder only,
    and no read waits for more than the reads and writes queued before it. Holds ``session.lock`` (re-entrant)
    inside its turn."""

    def __init__(self, session_lock: Any) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._queue: "collections.deque[object]" = collections.deque()
        self._writers = 0  # writes at the front of the queue
        self._session_lock = session_lock

    @contextlib.contextmanager
    def hold(self, write: bool = False) -> Iterator[None]:
        me = object()
        with self._cond:
            if write:
                self._queue.insert(self._writers, me)
                self._writers += 1
            else:
                self._queue.append(me)
            try:
                while self._busy or self._queue[0] is not me:
                    self._cond.wait()
            except BaseException:
                self._queue.remove(me)
                self._writers -= 1 if write else 0
                self._cond.notify_all()
                raise
            self._queue.popleft()
            if write:
                self._writers -= 1
            self._busy = True
        try:
            with self._session_lock:
                yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Engine:
    """The model, its edits and the limits of one server."""

    def __init__(self, session: EditSession, *, max_tokens_limit: int = 512, max_edits_per_request: int = 16) -> None:
        self.session = session
        self.tokenizer = session.tokenizer
        self.model_name = session.model_name
        self.max_tokens_limit = max_tokens_limit
        self.max_edits_per_request = max_edits_per_request
        self.context = int(getattr(session.model.config, "max_position_embeddings", 0) or 0)
        self.generations = 0
        self.turns = _TurnLock(session.lock)

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.model_name} has no chat template; use /v1/completions",
                               param="messages", code="no_chat_template")
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template error names the message that broke it
            raise RequestError(f"messages: the chat template refused them ({exc})", param="messages") from None

    def encode(self, prompt: str, params: GenParams) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        if params.max_tokens is None:
            room = self.context - len(ids) if self.context else self.max_tokens_limit
            if room < 1:
                raise RequestError(f"the prompt is {len(ids)} tokens, the model's whole context of {self.context}",
                                   param="messages", code="context_length_exceeded")
            params.max_tokens = min(self.max_tokens_limit, room)
        if params.max_tokens > self.max_tokens_limit:
            raise RequestError(f"max_tokens is {params.max_tokens}; this server allows at most {self.max_tokens_limit}",
                               param="max_tokens", code="max_tokens_too_large")
        if self.context and len(ids) + params.max_tokens > self.context:
            raise RequestError(f"the prompt is {len(ids)} tokens and max_tokens {params.max_tokens}: more than the "
                               f"model's context of {self.context}", param="max_tokens",
                               code="context_length_exceeded")
        return ids

    # ------------------------------------------------------------------ generation
    def generate(self, ids: list[int], params: GenParams, streamer: _Streamer | None = None) -> Generation:
        """One generation under the session's lock (edits synced first)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        session, tok = self.session, self.tokenizer
        n_prompt = len(ids)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                done = streamer is not None and streamer.cancelled.is_set()
                if params.stop and not done:
                    text = tok.decode(input_ids[0, n_prompt:].tolist(), skip_special_tokens=True)
                    done = _cut_at_stop(text, params.stop)[1]
                return torch.full((input_ids.shape[0],), bool(done), dtype=torch.bool, device=input_ids.device)

        sample = params.temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=params.max_tokens, do_sample=sample, num_beams=1,
                                      pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([_Stop()]),
                                      streamer=streamer)
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=None) if sample else \
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.turns.hold():
            session.sync()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            enc = torch.tensor([ids], device=session.device)
            with torch.no_grad(), session.editor.autocast(), session.editor.routing():
                out = session.model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), **kwargs)
                routed = session.editor.routed_ids()
            self.generations += 1
        new = out[0, n_prompt:].tolist()
        text, stopped = _cut_at_stop(tok.decode(new, skip_special_tokens=True), params.stop)
        eos = tok.eos_token_id
        finish = "stop" if stopped or (new and new[-1] == eos) or len(new) < params.max_tokens else "length"
        return Generation(text, new, n_prompt, finish, routed[0] if routed else None)

    def stream(self, ids: list[int], params: GenParams) -> Iterator[Any]:
        """Run ``generate`` in a thread; yield text deltas (str) as tokens arrive, then the final Generation.
        Closing the iterator (the client went away) stops the generation at the next token."""
        streamer = _Streamer()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["gen"] = self.generate(ids, params, streamer)
            except BaseException as exc:  # handed to the reader
                result["error"] = exc
            finally:
                streamer.queue.put(None)

        thread = threading.Thread(target=work, name="lifelong-generate", daemon=True)
        thread.start()
        tokens: list[int] = []
        sent = ""
        hold = max((len(s) for s in params.stop), default=1) - 1
        try:
            while True:
                item = streamer.queue.get()
                if item is None:
                    break
                tokens += item
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, params.stop)
                ready = text if stopped else text[: max(len(sent), len(text) - hold)]
                if ready.endswith("\ufffd"):  # half of a multi-byte character
                    continue
                if len(ready) > len(sent):
                    yield ready[len(sent):]
                    sent = ready
            thread.join()
            if "error" in result:
                raise result["error"]
            gen: Generation = result["gen"]
            if len(gen.text) > len(sent):
                yield gen.text[len(sent):]
            yield gen
        finally:
            streamer.cancelled.set()

    # ------------------------------------------------------------------ edits
    def apply(self, edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply validated edits in order (each one atomic in the store); returns their rows."""
        from lifelong.platform.errors import UserError

        for n, e in enumerate(edits):
            size = len(self.tokenizer(e["prompt"] + " " + e["target"], add_special_tokens=False).input_ids)
            if self.context and size > self.context:
                raise RequestError(f"edits[{n}]: prompt and target are {size} tokens, longer than the model's "
                                   f"context of {self.context}", param=f"edits[{n}]")
        out = []
        for e in edits:
            extra = {"request_id": e["id"]} if e.get("id") is not None else {}
            extra["source"] = "server"
            try:
                with self.turns.hold(write=True):
                    rec = self.session.apply(e["prompt"], e["target"], extra)
            except UserError as exc:  # e.g. the store's editor config refuses it; earlier edits stay applied
                raise RequestError(f"{exc} (edits applied before this one: {[r['id'] for r in out]})",
                                   code="edit_refused", status=409) from None
            out.append(_row(rec))
        return out

    def rollback(self, edit_id: int) -> dict[str, Any]:
        from lifelong.editing.store import StoreError

        with self.turns.hold(write=True):
            try:
                (_, changed), = self.session.rollback([edit_id])
            except StoreError:
                raise RequestError(f"no edit with id {edit_id}", param="id", code="edit_not_found", status=404) from None
            return {"id": edit_id, "object": "edit.rollback", "rolled_back": changed,
                    "already_rolled_back": not changed}

    def list_edits(self) -> list[dict[str, Any]]:
        with self.turns.hold():
            self.session.sync()
            loaded = set(self.session.loaded_ids)
            rows = [_row(r) for r in self.session.store.all_edits()]
        for r in rows:
            r["in_force"] = r["id"] in loaded
        return rows

    def health(self) -> dict[str, Any]:
        """Without the lock (a health probe never waits for an apply): what this server last saw."""
        session = self.session
        return {"status": "ok", "model": self.model_name, "store": str(session.store.path),
                "store_version_seen": session.seen_version, "edits_in_force": len(session.loaded_ids),
                "editor": session.editor_name, "generations": self.generations}


def _row(rec: Any) -> dict[str, Any]:
    d = rec.as_dict()
    d["object"] = "edit"
    for k in ("adapter_file", "adapter_sha256"):
        d.pop(k, None)
    if isinstance(d.get("created_at"), float) and not math.isfinite(d["created_at"]):
        d["created_at"] = None
    return d


def validate_edits(body: Any, limit: int) -> list[dict[str, Any]]:
    """The edits of a ``POST /v1/edits`` body: one object, a list, or ``{"edits": [...]}``, each with the fields of
    a JSON Lines edit file (``prompt``, ``target``; optional ``paraphrases``, ``locality``, ``id``). Everything is
    checked before any edit is applied."""
    if isinstance(body, dict) and "edits" in body and "prompt" not in body:
        body = body["edits"]
    items = body if isinstance(body, list) else [body]
    if not items:
        raise RequestError("no edits given", param="edits")
    if len(items) > limit:
        raise RequestError(f"{len(items)} edits in one request; at most {limit}", param="edits")
    out = []
    for n, e in enumerate(items):
        where = f"edits[{n}]" if isinstance(body, list) else "body"
        if not isinstance(e, dict):
            raise RequestError(f"{where}: each edit must be a JSON object", param=where)
        unknown = sorted(set(e) - {"prompt", "target", "paraphrases", "locality", "id"})
        if unknown:
            raise RequestError(f"{where}: unknown field {unknown[0]!r} (fields: prompt, target, paraphrases, "
                               "locality, id)", param=f"{where}.{unknown[0]}")
        for f in ("prompt", "target"):
            if f not in e:
                raise RequestError(f"{where}: missing required field {f!r}", param=f"{where}.{f}")
            if not isinstance(e[f], str):
                raise RequestError(f"{where}: field {f!r} must be a string", param=f"{where}.{f}")
            if not e[f].strip():
                raise RequestError(f"{where}: field {f!r} is empty", param=f"{where}.{f}")
            if len(e[f]) > 4000:
                raise RequestError(f"{where}: field {f!r} is longer than 4000 characters", param=f"{where}.{f}")
        for f in ("paraphrases", "locality"):
            v = e.get(f, [])
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise RequestError(f"{where}: field {f!r} must be a list of strings", param=f"{where}.{f}")
        if e.get("id") is not None and not isinstance(e["id"], (str, int)):
            raise RequestError(f"{where}: field 'id' must be a string or a number", param=f"{where}.id")
        out.append(e)
    return out
