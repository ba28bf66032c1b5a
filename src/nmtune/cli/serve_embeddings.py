"""``nmtune serve-embeddings``: an OpenAI-compatible embeddings API over a local text backbone."""

from __future__ import annotations

import argparse
import signal

from .extract import parse_backbone_args


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
    p.add_argument(
        "--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every request"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.add_argument("--log-requests", action="store_true", help="log one line per request")
    p.set_defaults(func=run)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from .._torch import resolve_device
    from ..backbones import create_backbone
    from ..serve import make_server

    backbone = create_backbone(args.backbone, **parse_backbone_args(args.backbone_arg))
    backbone.to(resolve_device(args.device))
    server = make_server(
        backbone,
        args.host,
        args.port,
        args.model_name,
        args.api_key,
        log_requests=args.log_requests,
    )
    # SIGTERM (kill, a script's trap) takes the same clean way out as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(
        f"serving {server.model_name} ({backbone.feature_dim}-d) at {server.url} "
        f"(POST /embeddings, GET /models); Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.server_close()
    return 0
