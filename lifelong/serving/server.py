"""Starting the server: the security check, the session, uvicorn (in the foreground, or in a thread for tests and
benchmarks on a free loopback port)."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from lifelong.editing.session import EditSession
from lifelong.platform.errors import UserError
from lifelong.serving.engine import Engine

TOKEN_ENV = "LIFELONG_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(host: str, token: str | None, insecure_no_auth: bool) -> str | None:
    """The token the write endpoints need (``--token``, else ``$LIFELONG_TOKEN``), or None when the operator asked
    for no authentication on a loopback host; anything else is refused."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None:
        if insecure_no_auth:
            raise UserError("give either a token (--token or $LIFELONG_TOKEN) or --insecure-no-auth, not both")
        if len(token) < 8 or any(c.isspace() for c in token):
            raise UserError("the token must be at least 8 characters without spaces")
        return token
    if not insecure_no_auth:
        raise UserError(f"lifelong serve needs a token for its write endpoints: --token TOKEN or ${TOKEN_ENV} "
                        "(or --insecure-no-auth on a loopback host)")
    if not is_loopback(host):
        raise UserError(f"--insecure-no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), not {host}")
    return None


def check_bind(host: str, port: int) -> None:
    """Refuse, before the model loads, a host/port the server could not listen on (in use, not an address here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_tokens_limit: int = 512
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 30.0  # a request body must arrive whole within this time (408)
    max_edits_per_request: int = 16
    max_batch: int = 1  # dynamic batching off: one generation at a time
    batch_wait_ms: float = 10.0


def build_app(session: EditSession, options: ServerOptions) -> Any:
    """The FastAPI app over ``session``. ``serving.app`` (FastAPI, pydantic) is imported here, not at the top, so
    ``lifelong --help`` does not pay for it (the exception to the package rule, like torch's lazy imports)."""
    from lifelong.serving.app import create_app

    if not session.store.readonly:  # a new store: its editor is this server's from now on (EditStore.set_editor)
        session.store.set_editor(session.editor_name, session.editor_config, session.editor.metric)
    engine = Engine(session, max_tokens_limit=options.max_tokens_limit,
                    max_edits_per_request=options.max_edits_per_request, max_batch=options.max_batch,
                    batch_wait_ms=options.batch_wait_ms)
    return create_app(engine, token=options.token, max_body_bytes=options.max_body_bytes,
                      body_timeout_s=options.body_timeout_s)


def _config(app: Any, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5, limit_concurrency=256)


def serve_forever(session: EditSession, options: ServerOptions) -> None:
    """Serve until interrupted (``lifelong serve``)."""
    import uvicorn

    uvicorn.Server(_config(build_app(session, options), options.host, options.port, "info")).run()


class BackgroundServer:
    """uvicorn in a daemon thread on a socket bound here (port 0: a free one); ``url``, ``stop()``. For tests and
    benchmarks; binds loopback only."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        if not is_loopback(host):
            raise UserError(f"BackgroundServer binds loopback hosts only, not {host}")
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(_config(app, host, self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="lifelong-serve")

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
