"""The server of `tiwiz serve`: one aiohttp application (token gate, runs pages, the wizard through textual-serve),
in the foreground or detached like a training (core.serve.record says where a running one is)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from core.errors import FieldError, TiwizError
from core.runs.api import _PROJECT_ROOT as PROJECT_ROOT
from core.safe_text import safe_print
from core.serve import auth, urls
from core.serve.pages import RunsSite, redirect_to
from core.serve.record import is_server, remove_record, running_servers, write_record

LOG = ".tiwiz-serve-{port}.log"
SHUTDOWN_S = 3.0  # how long open websockets get to close when the server stops


@dataclass(frozen=True)
class ServeOptions:
    runs_root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""  # "" = no token (loopback only)
    public_url: str | None = None
    wizard: bool = True  # False: the runs pages only (no textual-serve needed)
    app_args: tuple = field(default_factory=tuple)  # extra wizard arguments (--demo, --attach RUN, --fresh)


def build_app(options: ServeOptions) -> web.Application:
    app = web.Application(middlewares=[auth.security_headers, auth.token_gate(options.token, options.port)])
    app[auth.SECRET] = options.token
    RunsSite(options.runs_root, wizard=options.wizard).add_routes(app)
    if options.wizard:
        from core.serve.wizard import WizardServer

        WizardServer(options.runs_root, options.app_args).add_routes(app)
    else:
        app.router.add_get("/", redirect_to("runs/"))
    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one), or a clear error."""
    name = host.strip().strip("[]")
    try:
        if name in ("", "0.0.0.0"):
            return socket.create_server(("0.0.0.0", port), reuse_port=False)
        if name == "::":
            return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
        family = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((name, port), family=family)
    except socket.gaierror as exc:
        raise FieldError("host", f"--host {host}: not an address of this machine ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise FieldError("port", f"--port {port}: already in use; pick another port (or --port 0 for any free "
                                     "one)") from None
        raise FieldError("host", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve_foreground(options: ServeOptions, out=None) -> int:
    """Listen, print the addresses, serve until SIGINT/SIGTERM. Returns the exit code."""
    out = out or sys.stdout
    urls.check_bind(options.host, options.token)
    sock = bind(options.host, options.port)
    options = replace(options, port=sock.getsockname()[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=out)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    asyncio.run(_serve(options, sock, out))
    return 0


async def _serve(options: ServeOptions, sock: socket.socket, out) -> None:
    runner = web.AppRunner(build_app(options), access_log_class=auth.AccessLog, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    record = write_record(options.runs_root, options.port, host=options.host, wizard=options.wizard,
                          public_url=options.public_url)
    for line in urls.start_lines(options.host, options.port, options.token, options.public_url, options.runs_root):
        safe_print(line, file=out)
    out.flush()
    try:
        await stop.wait()
    finally:
        if record is not None:
            remove_record(record)
        await runner.cleanup()


# --- detached ------------------------------------------------------------------------------------------------------

def start_detached(options: ServeOptions, wait_s: float = 60.0) -> int:
    """Start the server in its own session (it outlives this shell and SSH), wait until it listens, print its
    addresses and how to stop it."""
    urls.check_bind(options.host, options.token)
    root = Path(options.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / LOG.format(port=options.port or "any")
    cmd = [sys.executable, "-m", "core.cli", "serve", "--host", options.host, "--port", str(options.port),
           "--runs", str(root)]
    cmd += ["--public-url", options.public_url] if options.public_url else []
    cmd += [] if options.wizard else ["--previews-only"]
    cmd += [] if options.token else ["--no-token"]
    cmd += [f"--app-arg={arg}" for arg in options.app_args]
    env = {**os.environ, auth.TOKEN_ENV: options.token, "PYTHONUNBUFFERED": "1"}  # the token never goes in argv
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token's first line
    with os.fdopen(fd, "wb") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    record = _wait_for_record(root, proc, wait_s)
    if record is None:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:] if log_path.exists() else ""
        raise TiwizError(f"the server did not start (see {log_path}):\n{tail.strip()}")
    lines = urls.start_lines(options.host, record["port"], options.token, options.public_url, root)
    for line in lines[:-1]:
        safe_print(line)
    safe_print(f"Serving in the background (pid {proc.pid}; log {log_path}). Stop it with: "
               f"tiwiz serve --stop --port {record['port']} --runs {root}")
    return 0


def _wait_for_record(root: Path, proc: subprocess.Popen, wait_s: float) -> dict | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        for record in running_servers(root):
            if record.get("pid") == proc.pid:
                return record
        time.sleep(0.1)
    return None


def stop_servers(runs_root: Path, port: int | None = None, wait_s: float = 10.0) -> int:
    """`tiwiz serve --stop`: SIGTERM the servers of this runs folder (on `port`), wait for them to go."""
    servers = running_servers(runs_root, port)
    if not servers:
        where = f" on port {port}" if port is not None else ""
        safe_print(f"no tiwiz server of {runs_root} is running{where}", file=sys.stderr)
        return 1
    for record in servers:
        os.kill(int(record["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(is_server(int(r["pid"])) for r in servers):
        time.sleep(0.1)
    for record in servers:
        alive = is_server(int(record["pid"]))
        safe_print(f"{'still running' if alive else 'stopped'}: the server on port {record['port']} "
                   f"(pid {record['pid']})")
    return 0
