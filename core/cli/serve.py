"""`tiwiz serve`: the wizard and the runs' previews in a browser, behind a token (the `web` extra: aiohttp and
textual-serve). `tiwiz wizard --serve [PORT]` is the same command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from core.errors import FieldError, TiwizError

EPILOG = """examples:
  tiwiz serve                              this machine only; from a laptop through  ssh -L 8000:localhost:8000
  tiwiz serve --host 0.0.0.0 --detach      a RunPod pod: expose HTTP port 8000, open the printed proxy URL
  tiwiz serve --previews-only --detach     previews, sheet and loss curve beside a wizard running in tmux
  tiwiz serve --stop                       stop a detached server
"""
WEB_EXTRA = "serving needs the web extra: pip install 'tiwiz[web]' (aiohttp and textual-serve)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the wizard and the runs' previews to a browser, with a token",
        description="Serve the wizard to a browser (each tab its own wizard; closing a tab never stops a training) "
                    "and each run's previews, contact sheet and loss curve as images under runs/. Every request "
                    "needs the token printed in the address at start.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for RunPod's proxy)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8000; 0: any free port)")
    p.add_argument("--public-url", metavar="URL",
                   help="the address users open when it is neither the RunPod proxy's nor this machine's, e.g. "
                        "behind your reverse proxy: https://example.com/tiwiz/ (printed at start)")
    p.add_argument("--token", help="the token every request needs (default: $TIWIZ_TOKEN, else a random one)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token: only with a loopback --host (anyone on this machine can use it)")
    p.add_argument("--runs", metavar="DIR",
                   help="the runs folder of the served wizard and of the runs pages (default ./runs or "
                        "$TIWIZ_RUNS_DIR)")
    p.add_argument("--previews-only", action="store_true",
                   help="serve only the runs pages (previews, contact sheet, loss curve), not the wizard")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true",
                      help="serve in the background and return (it outlives the shell and SSH)")
    mode.add_argument("--stop", action="store_true", help="stop the detached server(s) of this runs folder")
    p.add_argument("--app-arg", action="append", default=[], help=argparse.SUPPRESS)  # from `tiwiz wizard --serve`
    p.set_defaults(func=cmd_serve)


def serve_options(args):
    from core.runs.folder import default_root
    from core.serve import auth, urls
    from core.serve.server import ServeOptions

    port = 8000 if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise FieldError("port", f"--port {port}: use a port from 1 to 65535 (0: any free one)")
    token = auth.choose_token(args.token, args.no_token)
    urls.check_bind(args.host, token)
    root = (Path(args.runs) if args.runs else default_root()).expanduser().absolute()
    return ServeOptions(runs_root=root, host=args.host, port=port, token=token,
                        public_url=urls.check_public_url(args.public_url), wizard=not args.previews_only,
                        app_args=tuple(args.app_arg))


def cmd_serve(args) -> int:
    try:
        from core.serve import server
        if not args.previews_only and not args.stop:
            import textual_serve  # noqa: F401
    except ImportError as exc:
        raise TiwizError(f"{WEB_EXTRA} (missing: {exc.name})") from None
    if args.stop:
        from core.runs.folder import default_root

        root = (Path(args.runs) if args.runs else default_root()).expanduser().absolute()
        return server.stop_servers(root, args.port)
    options = serve_options(args)
    os.environ.pop("TIWIZ_TOKEN", None)  # read once; nothing started from here needs it
    if args.detach:
        return server.start_detached(options)
    return server.serve_foreground(options)
