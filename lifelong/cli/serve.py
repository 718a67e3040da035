"""``lifelong serve``: the edited model behind an OpenAI-compatible HTTP API with live edits (``docs/serving.md``).

The model is loaded once; the store is opened (created if missing) and its edits switched on. Every option is
checked, and the security rule applied (a token, or ``--insecure-no-auth`` on a loopback host), before the model
loads.
"""

from __future__ import annotations

import argparse
import sys

from lifelong.cli.options import add_device_options
from lifelong.editing.session import EditSession
from lifelong.platform.config import parse_overrides
from lifelong.platform.errors import UserError
from lifelong.serving.server import ServerOptions, check_bind, check_security, serve_forever


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sv = subparsers.add_parser("serve", help="serve the edited model (OpenAI-compatible API, live apply/rollback)")
    sv.add_argument("--store", required=True, help="edit store directory (created if missing)")
    sv.add_argument("--model", default=None, help="model (default: the store's, else smollm2-135m)")
    sv.add_argument("--editor", default=None, help="editor of a new store: sola (default), grace, ft-l")
    sv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="editor config override (only for a new store)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--token", default=None, help="bearer token of the write endpoints (default: $LIFELONG_TOKEN)")
    sv.add_argument("--insecure-no-auth", action="store_true",
                    help="no token on the write endpoints (refused unless --host is a loopback address)")
    sv.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    sv.add_argument("--max-batch", type=int, default=1,
                    help="dynamic batching: generate up to N concurrent requests together (default 1: one at a time)")
    sv.add_argument("--batch-wait-ms", type=float, default=10.0,
                    help="with --max-batch > 1: how long a request waits for others to join its batch")
    add_device_options(sv)
    sv.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.max_body_bytes < 1024:
        raise UserError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if not 1 <= args.max_batch <= 64:
        raise UserError(f"--max-batch must be between 1 and 64, got {args.max_batch}")
    if not 0 <= args.batch_wait_ms <= 1000:
        raise UserError(f"--batch-wait-ms must be between 0 and 1000, got {args.batch_wait_ms}")
    token = check_security(args.host, args.token, args.insecure_no_auth)
    check_bind(args.host, args.port)
    overrides = parse_overrides(args.overrides)
    session = EditSession(args.store, model=args.model, editor=args.editor, editor_config=overrides or None,
                          device=args.device, precision=args.precision)
    batching = f"dynamic batching up to {args.max_batch}" if args.max_batch > 1 else "batch 1"
    try:
        print(f"lifelong serve: {session.model_name} with {len(session.loaded_ids)} edits of {args.store} on "
              f"http://{args.host}:{args.port} (write endpoints: {'bearer token' if token else 'NO AUTH'}; "
              f"{batching})",
              file=sys.stderr, flush=True)
        serve_forever(session, ServerOptions(host=args.host, port=args.port, token=token,
                                             max_tokens_limit=args.max_tokens, max_body_bytes=args.max_body_bytes,
                                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms))
    finally:
        session.close()
    return 0
