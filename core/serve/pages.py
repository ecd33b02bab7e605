"""The runs pages: `runs/` lists the runs of the served runs folder; `runs/NAME/` shows a run's loss curve, contact
sheet and previews as real PNGs, newest first, and reloads itself while the run trains. Every link is relative, so
the pages work under any path prefix. Only files under a listed run's previews/ folder are served; browsing writes
nothing. Reading and drawing happen in threads, never on the server's event loop."""

from __future__ import annotations

import asyncio
import html
import re
import threading
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from core.runs import api as runapi
from core.runs import folder as runs
from core.runs.run_state import RunState
from core.serve.loss_png import loss_curve_png

REFRESH_S = 10  # how often a page of a training run reloads itself
PREVIEW_FILE = re.compile(r"[\w.\-]+\.png")
STYLE = """body{background:#121212;color:#ddd;font:15px/1.4 system-ui,sans-serif;margin:1.5em}
a{color:#6cf} img{max-width:100%;display:block;background:#000} table{border-collapse:collapse}
td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #333} .muted{color:#999}
.grid{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figcaption{color:#aaa;font-size:13px}"""


class _Followed:
    """One run's events folded so far: each request folds only what was appended since the last."""

    def __init__(self, run_dir: Path) -> None:
        self.follower = runapi.follow(run_dir)
        self.state = RunState()
        self.lock = threading.Lock()

    def refresh(self) -> RunState:
        with self.lock:
            self.state.apply_all(self.follower.poll_events())
            return self.state


class RunsSite:
    """The pages of the runs under `root`."""

    def __init__(self, root: Path, wizard: bool = True) -> None:
        self.root = Path(root)
        self.wizard = wizard  # link to the wizard (not with --previews-only)
        self._followed: dict[str, _Followed] = {}
        self._lock = threading.Lock()

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([
            web.get("/runs", redirect_to("runs/")),
            web.get("/runs/", self.index),
            web.get("/runs/{name}", self.to_run_page),
            web.get("/runs/{name}/", self.run_page),
            web.get("/runs/{name}/loss.png", self.loss_curve),
            web.get("/runs/{name}/previews/{file}", self.preview_file),
        ])

    # --- reading (threads) -----------------------------------------------------------------------------------

    def run_dir(self, name: str) -> Path:
        """The run folder NAME directly under the root, or 404: no other path is ever served."""
        if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            raise web.HTTPNotFound(text="no such run\n")
        path = self.root / name
        if path.is_symlink() or not runs.is_run_dir(path):
            raise web.HTTPNotFound(text="no such run\n")
        return path

    def state(self, name: str) -> RunState:
        path = self.run_dir(name)
        with self._lock:
            followed = self._followed.get(name)
            if followed is None or followed.follower.run_dir != path:
                followed = self._followed[name] = _Followed(path)
        return followed.refresh()

    # --- handlers ---------------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        infos = await asyncio.to_thread(runapi.list_runs, self.root)
        rows = "".join(
            f"<tr><td><a href=\"{quote(info.path.name)}/\">{html.escape(info.path.name)}</a></td>"
            f"<td>{html.escape(info.description)}</td><td>{info.step} / {info.max_steps or '?'}</td></tr>"
            for info in infos)
        body = (f"<h1>Runs</h1><p class=muted>in {html.escape(str(self.root))}</p>"
                + (f"<table><tr><th>run</th><th>state</th><th>step</th></tr>{rows}</table>" if rows
                   else "<p>No runs yet.</p>")
                + ("<p><a href=\"../\">the wizard</a></p>" if self.wizard else ""))
        return _page("tiwiz runs", body, refresh=any(info.alive for info in infos))

    async def to_run_page(self, request: web.Request) -> web.Response:
        return await redirect_to(quote(request.match_info["name"]) + "/")(request)

    async def run_page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = await asyncio.to_thread(self.run_dir, name)
        state, info = await asyncio.to_thread(lambda: (self.state(name), runs.inspect_run(path)))
        sheet = path / "previews" / "sheet.png"
        sheet_version = await asyncio.to_thread(lambda: sheet.stat().st_mtime_ns if sheet.is_file() else None)
        body = _run_body(name, state, info, sheet_version, self.wizard)
        return _page(f"tiwiz: {name}", body, refresh=info.alive)

    async def loss_curve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def draw() -> bytes:
            state = self.state(name)
            series = {"loss": state.losses, "smoothed": state.smoothed, "val": state.val_losses,
                      "holdout": state.holdout_losses}
            return loss_curve_png(series, state.max_steps)

        data = await asyncio.to_thread(draw)
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "no-cache"})

    async def preview_file(self, request: web.Request) -> web.StreamResponse:
        name, file = request.match_info["name"], request.match_info["file"]
        if not PREVIEW_FILE.fullmatch(file):
            raise web.HTTPNotFound(text="no such image\n")

        def locate() -> Path:
            previews = self.run_dir(name) / "previews"
            target = previews / file
            if previews.is_symlink() or target.is_symlink() or not target.is_file():
                raise web.HTTPNotFound(text="no such image\n")
            return target

        target = await asyncio.to_thread(locate)
        return web.FileResponse(target, headers={"Cache-Control": "no-cache", "Content-Type": "image/png"})


def _run_body(name: str, state: RunState, info, sheet_version: int | None, wizard: bool) -> str:
    parts = ["<p><a href=\"../\">all runs</a>" + (" · <a href=\"../../\">the wizard</a>" if wizard else "") + "</p>",
             f"<h1>{html.escape(name)}</h1>",
             f"<p>{html.escape(info.description)} · step {state.step} of {state.max_steps or '?'}"
             + (f" · suggested best step {state.best_step}" if state.best_step is not None else "") + "</p>",
             f"<h2>Loss</h2><img id=loss alt=\"loss curve\" src=\"loss.png?v={state.version}\">"]
    if sheet_version is not None:
        parts.append(f"<h2>Contact sheet</h2><img id=sheet alt=\"all previews by step\" "
                     f"src=\"previews/sheet.png?v={sheet_version}\">")
    shots = sorted(((step, rel) for step, rel in state.previews.items() if _preview_name(rel)), reverse=True)
    if shots:
        figures = "".join(
            f"<figure><img class=preview alt=\"preview at step {step}\" src=\"previews/{quote(_preview_name(rel))}\">"
            f"<figcaption>step {step}</figcaption></figure>" for step, rel in shots)
        parts.append(f"<h2>Previews</h2><div class=grid>{figures}</div>")
    else:
        parts.append("<h2>Previews</h2><p class=muted>No preview yet.</p>")
    return "".join(parts)


def _preview_name(rel: str) -> str | None:
    """The file name of a preview the events name, when it lies in previews/ (the only folder served)."""
    parts = Path(rel).parts
    if len(parts) == 2 and parts[0] == "previews" and PREVIEW_FILE.fullmatch(parts[1]):
        return parts[1]
    return None


def _page(title: str, body: str, refresh: bool = False) -> web.Response:
    meta = f"<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">" if refresh else ""
    text = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">"
            f"{meta}<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def redirect_to(location: str):
    """A handler redirecting to `location`, relative to the request's address (so any path prefix stays)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return handler
