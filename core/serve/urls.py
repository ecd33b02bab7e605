"""Where the server listens and the addresses printed at start: the RunPod proxy URL when RUNPOD_POD_ID is set, the
SSH tunnel command otherwise, and --public-url when given. The page itself never needs to know any of them: it
derives its websocket address from its own location, so every one of these works (and any reverse proxy that
forwards websockets, under any path prefix)."""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from urllib.parse import urlsplit

from core.errors import FieldError

RUNPOD_ENV = "RUNPOD_POD_ID"
ANY_ADDRESS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost). A host name other than
    localhost counts as reachable from elsewhere."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not token and not is_loopback(host):
        raise FieldError("host", f"--host {host}: anyone who reaches this machine could drive the wizard and write "
                                 "files. Serving beyond this machine needs a token: leave out --no-token (or the "
                                 "empty --token / TIWIZ_TOKEN) and a random one is made, or bind --host 127.0.0.1.")


def check_public_url(url: str | None) -> str | None:
    """The --public-url as a base address ending in "/", or None."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FieldError("public_url", f"--public-url {url!r}: give the whole address the browser opens, e.g. "
                                       "https://example.com/tiwiz/")
    if parts.query or parts.fragment:
        raise FieldError("public_url", f"--public-url {url!r}: give the address without ?query or #fragment")
    return url.strip().rstrip("/") + "/"


def local_base(host: str, port: int) -> str:
    """The address to open on this machine (and through `ssh -L PORT:localhost:PORT`)."""
    name = host.strip().strip("[]")
    if name in ANY_ADDRESS or is_loopback(name):
        name = "localhost"
    elif ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}/"


def runpod_base(port: int, env=None) -> str | None:
    pod = (os.environ if env is None else env).get(RUNPOD_ENV, "").strip()
    return f"https://{pod}-{port}.proxy.runpod.net/" if pod else None


def with_token(base: str, token: str) -> str:
    return f"{base}?token={token}" if token else base


def tunnel_command(port: int) -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a container without /etc/passwd entry
        user = "root"
    return f"ssh -N -L {port}:localhost:{port} {user}@{socket.gethostname()}"


def primary_base(host: str, port: int, public_url: str | None, env=None) -> str:
    """The address a user opens: --public-url, else RunPod's proxy (when it can reach us), else this machine's."""
    runpod = runpod_base(port, env) if not is_loopback(host) else None
    return public_url or runpod or local_base(host, port)


def start_lines(host: str, port: int, token: str, public_url: str | None, runs_root, env=None) -> list[str]:
    """What `tiwiz serve` prints when it listens. The first line is the address to open, with the token: the only
    line that holds it (the others, and the access log after them, never do)."""
    runpod = runpod_base(port, env)
    reachable = not is_loopback(host)
    local = local_base(host, port)
    primary = primary_base(host, port, public_url, env)
    same = "?token=… (the token above)" if token else ""
    lines = [f"tiwiz serve: open {with_token(primary, token)}"]
    if runpod and reachable and runpod != primary:
        lines.append(f"  RunPod proxy:    {runpod}{same}")
    elif runpod and not reachable:
        lines.append(f"  RunPod proxy:    reaches only a server started with --host 0.0.0.0 (then {runpod})")
    if primary != local:
        lines.append(f"  on this machine: {local}{same}")
    if not (runpod and reachable):
        where = "the address above" if primary == local else f"http://localhost:{port}/{same}"
        lines.append(f"  from a laptop:   {tunnel_command(port)}   (your usual ssh address and -p port), then "
                     f"open {where}")
    lines.append(f"  run previews:    runs/ under the same address; the runs are those in {runs_root}")
    if not token:
        lines.append(f"  no token: anyone who can open {local} on this machine can use it")
    lines.append("Ctrl+C stops the server; trainings started from it go on.")
    return lines
