"""The serving engine: one ``EditSession`` (the model loaded once, the store's edits in force) behind the HTTP API.

Every model operation holds the session's lock (``EditSession.lock``, see ``editing/session.py``): an apply or
rollback waits for the generation in progress and the next generation waits for it, so a generation sees the
edits before an apply or after it, never half of one. The engine takes that lock through ``_TurnLock``:
generations in arrival order, a waiting write (apply, rollback) ahead of the waiting generations, so a write waits
for the generation in progress only and no request waits for more than those queued before it. Before each
generation (or batch of them) and each listing the engine calls ``session.sync()``, so edits applied or rolled
back by another writer (the CLI, a second server on the same store) are in force for the next request; the check
is one read of the store's change counter.

Generation: the prompt is tokenised without special tokens (as ``lifelong edit generate`` does, so the server's
greedy output is the CLI's), the routing decision is taken at the last prompt token and holds for the generated
tokens; ``temperature`` 0 is greedy, above 0 samples (``top_p``, ``seed``); ``stop`` strings end the text
before them; ``max_tokens`` is capped by the server's limit and by the model's context.

Dynamic batching (``max_batch`` > 1, off by default): requests go to one batching thread, which takes the oldest
waiting request, waits up to ``batch_wait_ms`` after its arrival for more, then takes its turn on the lock and
generates the oldest compatible waiting requests together (at most ``max_batch``): prompts left-padded with an
attention mask (``generate`` derives the position ids from the mask), one ``model.generate`` call, one
``session.sync()`` before it, so a batch sees one store version. Compatible: both greedy, or both sampling with
the same ``temperature`` and ``top_p`` and no ``seed`` (a seeded request runs alone, so its output does not
depend on its neighbours). Requests routed to different edits share a batch: the editors route each sequence of a
batch on its own (SoLA's routed LoRA picks a LoRA slot per row; GRACE a codebook entry per row; FT-L has no
routing), at the last prompt token, which left padding puts at the last position of every row. Each row stops
on its own (end-of-sequence, its ``stop`` strings, its ``max_tokens``, its client leaving a stream); the batch
ends when every row has. Streams batch too: each row's new tokens go to its own stream.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from lifelong.editing.editor import check_edit_text
from lifelong.editing.session import EditSession
from lifelong.editing.store import StoreError, StoreFullError, UnknownEditError
from lifelong.platform.errors import UserError

log = logging.getLogger(__name__)


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
    """One streamed request's channel: its new token ids go to ``queue`` (None ends it, put by ``Engine.stream``);
    ``cancelled`` (the client went away) stops its row of the generation at the next token."""

    def __init__(self) -> None:
        self.queue: "queue.Queue[Any]" = queue.Queue()
        self.cancelled = threading.Event()


@dataclass
class _Job:
    """One generation request: in to ``Engine._run``, out with ``result`` or ``error`` and ``done`` set."""

    ids: list[int]
    params: GenParams
    streamer: _Streamer | None = None
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys may share a ``generate`` call (the same decoding settings, no seed)."""
        p = self.params
        if p.temperature <= 0:
            return ("greedy",)
        if p.seed is not None:
            return ("seeded", id(self))
        return ("sample", p.temperature, p.top_p)


class _Rows:
    """Per-row bookkeeping of one ``generate`` call over left-padded prompts of width ``width``: each row stops on
    its own (end-of-sequence, a stop string, its ``max_tokens``, its stream cancelled) and ``length[b]`` records
    how many new tokens it kept; as a transformers streamer it hands each row's tokens to the row's own stream."""

    def __init__(self, jobs: Sequence[_Job], width: int, tokenizer: Any, eos: set[int]) -> None:
        self.jobs, self.width, self.tok, self.eos = list(jobs), width, tokenizer, eos
        self.length: list[int | None] = [None] * len(self.jobs)
        self.stopped = [False] * len(self.jobs)  # by a stop string
        self._steps = -1  # generate() hands the prompt to put() first

    def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:  # a StoppingCriteria
        import torch

        n = input_ids.shape[1] - self.width
        for b, job in enumerate(self.jobs):
            if self.length[b] is not None:
                continue
            p, done = job.params, False
            if int(input_ids[b, -1]) in self.eos or n >= p.max_tokens:
                done = True
            elif job.streamer is not None and job.streamer.cancelled.is_set():
                done = True
            elif p.stop:
                text = self.tok.decode(input_ids[b, self.width:].tolist(), skip_special_tokens=True)
                done = self.stopped[b] = _cut_at_stop(text, p.stop)[1]
            if done:
                self.length[b] = n
        return torch.tensor([x is not None for x in self.length], dtype=torch.bool, device=input_ids.device)

    def put(self, value: Any) -> None:  # the streamer interface
        self._steps += 1
        if self._steps == 0:
            return
        tokens = value.reshape(-1).tolist()
        for b, job in enumerate(self.jobs):
            if job.streamer is not None and (self.length[b] is None or self._steps <= self.length[b]):
                job.streamer.queue.put([int(tokens[b])])

    def end(self) -> None:
        pass  # Engine.stream puts the end of each stream itself


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


class _Batcher:
    """The dynamic batching thread of an engine with ``max_batch`` > 1 (see the module docstring). Requests wait in
    arrival order; the oldest starts the next batch, which waits up to ``batch_wait_ms`` after its arrival for
    compatible requests (``_Job.batch_key``), takes its turn on the lock (a waiting write goes first), then
    gathers the compatible requests queued by then, oldest first, up to ``max_batch``."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None

    def submit(self, job: _Job) -> Generation:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lifelong-batcher", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _compatible(self, first: _Job) -> list[_Job]:
        """``first`` and the waiting jobs that may join it, oldest first, up to ``max_batch``: the same batch key,
        and the padded width plus the longest ``max_tokens`` within the context (every row runs that long)."""
        key, context = first.batch_key(), self.engine.context
        out: list[_Job] = []
        width = new = 0
        for j in self._queue:
            if j.batch_key() != key:
                continue
            w, n = max(width, len(j.ids)), max(new, j.params.max_tokens)
            if out and context and w + n > context:
                continue
            out.append(j)
            width, new = w, n
            if len(out) == self.engine.max_batch:
                break
        return out

    def _loop(self) -> None:
        engine, wait = self.engine, self.engine.batch_wait_ms / 1000.0
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                first = self._queue[0]
                while len(self._compatible(first)) < engine.max_batch:
                    left = first.arrived + wait - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Job] = []
            try:
                with engine.turns.hold():
                    with self._cond:
                        batch = self._compatible(first)
                        for j in batch:
                            self._queue.remove(j)
                    live = [j for j in batch if j.streamer is None or not j.streamer.cancelled.is_set()]
                    if live:
                        for j, g in zip(live, engine._run(live)):
                            j.result = g
                    for j in batch:
                        if j.result is None:
                            j.error = RequestError("the client went away before its generation started")
            except BaseException as exc:  # handed to every request of the batch; the thread goes on
                for j in batch or [first]:
                    j.error = exc
                with self._cond:
                    if first in self._queue and not batch:
                        self._queue.remove(first)
            finally:
                for j in batch or [first]:
                    j.done.set()


class Engine:
    """The model, its edits and the limits of one server."""

    def __init__(self, session: EditSession, *, max_tokens_limit: int = 512, max_edits_per_request: int = 16,
                 max_batch: int = 1, batch_wait_ms: float = 0.0) -> None:
        if max_batch < 1 or batch_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and batch_wait_ms >= 0, got {max_batch}, {batch_wait_ms}")
        self.session = session
        self.tokenizer = session.tokenizer
        self.model_name = session.model_name
        self.max_tokens_limit = max_tokens_limit
        self.max_edits_per_request = max_edits_per_request
        self.context = int(getattr(session.model.config, "max_position_embeddings", 0) or 0)
        self.generations = 0
        self.batches = 0  # model.generate calls (generations / batches: the mean batch size)
        self.largest_batch = 0
        self.max_batch = max_batch
        self.batch_wait_ms = float(batch_wait_ms)
        self.turns = _TurnLock(session.lock)
        eos = getattr(getattr(session.model, "generation_config", None), "eos_token_id", None)
        # the ids generate() itself stops on, so a row of a batch ends where it would end alone
        self.eos = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        self._batcher = _Batcher(self) if max_batch > 1 else None

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
        """One generation: at batch 1 under the session's lock here, or through the batching thread (edits synced
        first either way)."""
        job = _Job(ids, params, streamer)
        if self._batcher is not None:
            return self._batcher.submit(job)
        with self.turns.hold():
            return self._run([job])[0]

    def _run(self, jobs: Sequence[_Job]) -> list[Generation]:
        """Generate ``jobs`` (one batch key) in one ``generate`` call; the caller holds the turn. One prompt: as
        is; several: left-padded, with the attention mask (position ids follow from it in ``generate``)."""
        import torch
        from transformers import StoppingCriteriaList

        session, tok = self.session, self.tokenizer
        params = jobs[0].params
        width = max(len(j.ids) for j in jobs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos, default=0)
        rows = _Rows(jobs, width, tok, self.eos)
        sample = params.temperature > 0
        streaming = any(j.streamer is not None for j in jobs)
        kwargs: dict[str, Any] = dict(max_new_tokens=max(j.params.max_tokens for j in jobs), do_sample=sample,
                                      num_beams=1, pad_token_id=pad, stopping_criteria=StoppingCriteriaList([rows]),
                                      streamer=rows if streaming else None)
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=None) if sample else \
            kwargs.update(temperature=None, top_p=None, top_k=None)
        session.sync()
        if params.seed is not None:  # a seeded job is alone in its batch (batch_key)
            torch.manual_seed(params.seed)
        enc = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in jobs], device=session.device)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=session.device)
        with torch.no_grad(), session.editor.autocast(), session.editor.routing():
            out = session.model.generate(input_ids=enc, attention_mask=mask, **kwargs)
            routed = session.editor.routed_ids()
        self.generations += len(jobs)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        gens = []
        for b, job in enumerate(jobs):
            n = rows.length[b] if rows.length[b] is not None else job.params.max_tokens
            new = out[b, width:width + n].tolist()
            text, stopped = _cut_at_stop(tok.decode(new, skip_special_tokens=True), job.params.stop)
            finish = "stop" if stopped or (new and new[-1] in self.eos) or len(new) < job.params.max_tokens \
                else "length"
            gens.append(Generation(text, new, len(job.ids), finish, routed[b] if len(routed) > b else None))
        return gens

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
        for n, e in enumerate(edits):
            size = len(self.tokenizer(e["prompt"] + " " + e["target"], add_special_tokens=False).input_ids)
            if self.context and size > self.context:
                raise RequestError(f"edits[{n}]: prompt and target are {size} tokens, longer than the model's "
                                   f"context of {self.context}", param=f"edits[{n}]")
        out = []
        for n, e in enumerate(edits):
            extra = {"request_id": e["id"]} if e.get("id") is not None else {}
            extra["source"] = "server"
            try:
                with self.turns.hold(write=True):
                    rec = self.session.apply(e["prompt"], e["target"], extra)
            except StoreFullError as exc:
                raise store_failure(exc, f"edits[{n}] was not applied (edits applied before it: "
                                         f"{[r['id'] for r in out]})") from None
            except UserError as exc:  # e.g. the store's editor config refuses it; earlier edits stay applied
                raise RequestError(f"{exc} (edits applied before this one: {[r['id'] for r in out]})",
                                   code="edit_refused", status=409) from None
            out.append(_row(rec))
        return out

    def rollback(self, edit_id: int) -> dict[str, Any]:
        with self.turns.hold(write=True):
            try:
                (_, changed), = self.session.rollback([edit_id])
            except UnknownEditError:
                raise RequestError(f"no edit with id {edit_id}", param="id", code="edit_not_found", status=404) from None
            except StoreError as exc:  # the edit exists: a 404 would be a lie (a full disk used to answer one)
                raise store_failure(exc, f"edit {edit_id} was not rolled back") from None
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
                "editor": session.editor_name, "generations": self.generations, "batches": self.batches,
                "largest_batch": self.largest_batch, "max_batch": self.max_batch}


def store_failure(exc: StoreError, what: str) -> RequestError:
    """The server's answer to a store that could not do a write: 507 for a full disk, else 503; the body says what
    did not happen and that the store is unchanged, without the store's path (it goes to the server's log)."""
    log.warning("edit store write failed: %s", exc)
    if isinstance(exc, StoreFullError):
        return RequestError(f"the edit store's disk is full: {what}; nothing of this write was stored; free some "
                            "space and try again", code="insufficient_storage", status=507, type="server_error")
    return RequestError(f"the edit store could not be written: {what}; nothing of this write was stored; see the "
                        "server's log", code="store_unavailable", status=503, type="server_error")


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
        _check_texts(e, where)
        if e.get("id") is not None and not isinstance(e["id"], (str, int)):
            raise RequestError(f"{where}: field 'id' must be a string or a number", param=f"{where}.id")
        out.append(e)
    return out


def _check_texts(edit: dict[str, Any], where: str) -> None:
    """The text checks the session makes at apply time (a lone surrogate, a control character such as NUL), made
    here for every edit of the request before any is applied: a bad second edit no longer leaves the first one
    applied behind a 409."""
    for name in ("prompt", "target", "paraphrases", "locality"):
        values = edit.get(name, [])
        for value in [values] if isinstance(values, str) else values:
            try:
                check_edit_text(value, name, where)
            except UserError as exc:
                raise RequestError(str(exc), param=f"{where}.{name}") from None
