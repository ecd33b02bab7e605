"""Where a run's previews page is: for the wizard served in a browser, the address relative to its page; for the
wizard in a terminal (half-block previews, e.g. in tmux), where a browser shows them at full size."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from core.serve.record import running_servers
from core.serve.urls import primary_base


def page_path(run_dir: str | Path, runs_root: str | Path) -> str | None:
    """`runs/NAME/`, relative to the served wizard's page, when the run lies directly in the served runs folder."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent != Path(runs_root).resolve():
        return None
    return f"runs/{quote(run_dir.name)}/"


def where_to_see(run_dir: str | Path) -> str:
    """One message: the address of a running server's page of this run, else how to start one (reads the server
    records: call it off the UI thread)."""
    run_dir = Path(run_dir).absolute()
    root, name = run_dir.parent, quote(run_dir.name)
    servers = running_servers(root)
    if servers:
        server = servers[0]
        port = server.get("port")
        base = primary_base(str(server.get("host") or "127.0.0.1"), port, server.get("public_url"))
        return (f"Full-size previews, contact sheet and loss curve: {base}runs/{name}/ (from a laptop: "
                f"ssh -N -L {port}:localhost:{port} to this machine first; the token is in the first line "
                "`tiwiz serve` printed).")
    return ("Full-size previews, contact sheet and loss curve in a browser: run "
            f"`tiwiz serve --previews-only --detach --runs {root}` on this machine and open "
            f"runs/{name}/ under the address it prints.")
