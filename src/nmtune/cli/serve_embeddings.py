"""``nmtune serve-embeddings``: an OpenAI-compatible embeddings API over a local text backbone."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .._validation import NMTuneError
from .extract import parse_backbone_args

#: Environment variable the API key is read from when no option names one.
API_KEY_ENV = "NMTUNE_API_KEY"

#: ServerLimits fields as options: (field, metavar, help).
LIMIT_OPTIONS = (
    ("max_body_bytes", "N", "largest request body; longer ones get 413 unread"),
    (
        "max_input_chars",
        "N",
        "most characters per input (400 beyond); the backbone keeps its max_seq_length tokens",
    ),
    ("max_inputs", "N", "most inputs per request (400 beyond)"),
    ("max_batch_inputs", "N", "most inputs per forward pass of the backbone"),
    ("workers", "N", "threads serving connections"),
    ("queue_size", "N", "connections waiting for a worker; beyond them 503 + Retry-After"),
    ("header_timeout", "SECONDS", "time for a request's line and headers (and keep-alive idle)"),
    ("body_timeout", "SECONDS", "time for a request's body, and to write an answer"),
    ("retry_after", "SECONDS", "the Retry-After of a 503"),
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve-embeddings",
        help="serve a text backbone as an OpenAI-compatible embeddings API",
        description="Serve POST /v1/embeddings and GET /v1/models like a hosted embeddings API, "
        "embedding with a registered text backbone. A study with backbone openai:MODEL and "
        "base_url http://HOST:PORT/v1 then gets its features only through the API: black-box "
        "NMTune. Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--backbone",
        default="minilm",
        metavar="NAME",
        help="a text backbone, see `nmtune backbones` (default: %(default)s)",
    )
    p.add_argument(
        "--backbone-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone factory argument, repeatable (e.g. max_seq_length=128)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: %(default)s, this machine only)",
    )
    p.add_argument("--port", type=int, default=8765, help="0 picks a free one (default 8765)")
    p.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model id clients must send (default: the backbone's name)",
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help="require 'Authorization: Bearer KEY' on every request, KEY being this file's "
        f"first line; without this option or --api-key, ${API_KEY_ENV} is read if set",
    )
    key.add_argument(
        "--api-key",
        metavar="KEY",
        help="as --api-key-file, from the command line. WARNING: every local user can read a "
        f"command line (ps); prefer ${API_KEY_ENV} or --api-key-file",
    )
    from ..serve import ServerLimits

    defaults = ServerLimits()
    for field, metavar, text in LIMIT_OPTIONS:
        default = getattr(defaults, field)
        p.add_argument(
            "--" + field.replace("_", "-"),
            type=type(default),
            default=default,
            metavar=metavar,
            help=f"{text} (default {default})",
        )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.add_argument("--log-requests", action="store_true", help="log one line per request")
    p.set_defaults(func=run)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file, --api-key or $NMTUNE_API_KEY, in that order; None if none."""
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NMTuneError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from None
        if not lines or not lines[0].strip():
            raise NMTuneError(f"--api-key-file {args.api_key_file} is empty")
        return lines[0].strip()
    if args.api_key is not None:
        print(
            f"warning: a key on the command line is visible to every local user; prefer "
            f"${API_KEY_ENV} or --api-key-file",
            file=sys.stderr,
        )
        return args.api_key
    return os.environ.get(API_KEY_ENV) or None


def run(args: argparse.Namespace) -> int:
    from .._torch import resolve_device
    from ..backbones import create_backbone
    from ..serve import ServerLimits, make_server

    key = api_key(args)
    limits = ServerLimits(**{field: getattr(args, field) for field, _, _ in LIMIT_OPTIONS})
    backbone = create_backbone(args.backbone, **parse_backbone_args(args.backbone_arg))
    backbone.to(resolve_device(args.device))
    server = make_server(
        backbone,
        args.host,
        args.port,
        args.model_name,
        key,
        log_requests=args.log_requests,
        limits=limits,
    )
    # SIGTERM (kill, a script's trap) takes the same clean way out as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(
        f"serving {server.model_name} ({backbone.feature_dim}-d) at {server.url} "
        f"(POST /embeddings, GET /models){' with an API key' if key else ''}; Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.server_close()
    return 0
