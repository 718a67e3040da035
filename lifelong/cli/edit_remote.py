"""``lifelong edit apply|rollback|list|generate --server URL``: the edit commands against a running ``lifelong
serve``, which keeps the model loaded between commands (docs/editing.md, "Keeping the model warm").

Each local edit command pays the interpreter's start-up and a model load before its first edit; a user who edits
interactively pays it per command. With ``--server`` the command sends its work to the server's HTTP API
(``POST /v1/edits``, ``DELETE /v1/edits/{id}``, ``GET /v1/edits``, ``POST /v1/completions``) and loads nothing: the
same store, the same edits, the server's model. The client is the standard library's ``urllib`` (nothing to install,
nothing heavy to import); every failure (no server, a refused token, an edit the store refuses) is one line.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from lifelong.editing.editor import EditRequest
from lifelong.platform.errors import UserError, one_line


class Remote:
    """A running ``lifelong serve`` at ``url``; ``token`` (default ``$LIFELONG_TOKEN``) for the write endpoints."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 900.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--server {url}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/")
        self.token = token or os.environ.get("LIFELONG_TOKEN") or None
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the JSON answer, or a ``UserError`` naming the server and its own error message."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise UserError(self._refusal(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"--server {self.url}: cannot reach it ({reason}); start one with "
                            f"`lifelong serve --store DIR` or check the URL") from None
        except ValueError:
            raise UserError(f"--server {self.url}{path}: the answer is not JSON; is it a `lifelong serve`?") from None

    def _refusal(self, exc: urllib.error.HTTPError) -> str:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        if exc.code == 401:
            return (f"--server {self.url} refused the token (401: {message}); give the server's token with "
                    f"--token or LIFELONG_TOKEN")
        if exc.code == 404 and "edit" not in str(message):
            return f"--server {self.url}: {exc.code} {message}; is it a `lifelong serve`?"
        return f"--server {self.url}: {exc.code} {one_line(str(message))}"

    def apply(self, requests: list[EditRequest], log: Any) -> list[dict[str, Any]]:
        """Apply the edits in order, one request each (each is atomic in the server's store); ``log`` gets one
        progress line per edit, as a local apply prints."""
        rows = []
        for i, req in enumerate(requests, 1):
            t0 = time.perf_counter()
            body = {"prompt": req.prompt, "target": req.target,
                    **({"id": req.id} if req.id is not None else {})}
            row = self.call("POST", "/v1/edits", body)["data"][0]
            rows.append(row)
            log(f"[{i}/{len(requests)}] edit {row['id']}: {req.prompt!r} -> {req.target!r} "
                f"({time.perf_counter() - t0:.1f} s on {self.url})")
        return rows

    def rollback(self, ids: list[int]) -> list[tuple[int, bool]]:
        return [(i, bool(self.call("DELETE", f"/v1/edits/{i}")["rolled_back"])) for i in ids]

    def edits(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/edits")["data"])

    def generate(self, prompts: list[str], max_new_tokens: int) -> Any:
        """Greedy completions, one request per prompt, in order (``temperature`` 0, as ``edit generate``)."""
        model = self.call("GET", "/v1/models")["data"][0]["id"]
        for prompt in prompts:
            choice = self.call("POST", "/v1/completions", {"model": model, "prompt": prompt, "temperature": 0,
                                                            "max_tokens": max_new_tokens})["choices"][0]
            yield {"prompt": prompt, "completion": choice["text"], "edit_id": choice.get("edit_id")}
