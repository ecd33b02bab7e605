"""The runs pages of `tiwiz serve` on a real server process: a run's page reloads itself while its worker holds the
run (and stops when it is over), the loss curve PNG follows the events, only files under a run's previews/ are
served, browsing writes nothing; `--previews-only`, `--detach` and `--stop`; the loss curve drawn with Pillow; where
the wizard in a terminal says the previews can be seen (`o` on the monitor)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from core.atomic import atomic_write_json
from core.runs import folder as runs
from core.serve import links
from core.serve.loss_png import SERIES, SIZE, loss_curve_png
from core.serve.record import is_server
from tests.serve_support import TIWIZ, serve_env, start_serve
from tests.tui_support import gradient_png, recorded_events, write_recorded_run

RUN = "dog-20250614-090000"


async def _fetch(url: str, token: str):
    async with aiohttp.ClientSession(headers={"Authorization": f"token {token}"}) as session:
        async with session.get(URL(url, encoded=True), allow_redirects=False) as response:  # sent as written
            return response.status, await response.read(), response.headers.get("Location")


def fetch(server, path: str):
    return asyncio.run(_fetch(server.base + path, server.token))


def _append(run_dir, events) -> None:
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event) + "\n")


def _tree(root) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_run_page_reloads_while_the_run_trains_and_the_loss_curve_follows(tmp_path):
    run_dir = write_recorded_run(tmp_path / "runs" / RUN, recorded_events("dog", steps=120, max_steps=400))
    lock = runs.acquire_lock(run_dir)  # held as a worker holds it: the run is alive
    server = start_serve(tmp_path, "--previews-only")
    try:
        status, page, _ = fetch(server, f"runs/{RUN}/")
        assert status == 200 and b'http-equiv="refresh"' in page
        assert page.count(b'class=preview') == 3 and b'previews/dog-120.png' in page
        status, first, _ = fetch(server, f"runs/{RUN}/loss.png")
        assert status == 200 and Image.open(io.BytesIO(first)).size == SIZE
        more = [e for e in recorded_events("dog", steps=160, max_steps=400) if e.get("step", 0) > 120]
        gradient_png(run_dir / "previews" / "dog-160.png", seed=4)
        _append(run_dir, more)
        status, page, _ = fetch(server, f"runs/{RUN}/")
        assert page.count(b'class=preview') == 4 and page.index(b"dog-160.png") < page.index(b"dog-120.png")
        assert fetch(server, f"runs/{RUN}/loss.png")[1] != first  # redrawn with the new steps
        status, image, _ = fetch(server, f"runs/{RUN}/previews/dog-160.png")
        assert status == 200 and Image.open(io.BytesIO(image)).size == (64, 64)
        lock.release()
        status_file = json.loads((run_dir / "status.json").read_text())
        atomic_write_json(run_dir / "status.json", {**status_file, "state": "finished"})
        status, page, _ = fetch(server, f"runs/{RUN}/")
        assert b'http-equiv="refresh"' not in page and b"finished" in page
        status, index, _ = fetch(server, "runs/")
        assert f'href="{RUN}/"'.encode() in index and b"refresh" not in index
    finally:
        server.stop()


def test_only_the_previews_of_listed_runs_are_served_and_browsing_writes_nothing(tmp_path):
    root = tmp_path / "runs"
    run_dir = write_recorded_run(root / RUN, recorded_events("dog", steps=40, max_steps=40, finished=True),
                                 state="finished")
    (tmp_path / "secret.png").write_bytes((run_dir / "previews" / "dog-40.png").read_bytes())
    os.symlink(tmp_path / "secret.png", run_dir / "previews" / "link.png")
    (run_dir / "previews" / "notes.txt").write_text("not an image")
    os.symlink(run_dir, root / "linked-run")
    write_recorded_run(tmp_path / "outside-run", recorded_events("cat", steps=40, max_steps=40))
    server = start_serve(tmp_path, "--previews-only")
    try:
        before = _tree(tmp_path)
        assert fetch(server, f"runs/{RUN}/previews/dog-40.png")[0] == 200
        for path in (f"runs/{RUN}/previews/link.png", f"runs/{RUN}/previews/notes.txt",
                     f"runs/{RUN}/previews/..%2Fstatus.json", f"runs/{RUN}/previews/%2E%2E%2Fevents.jsonl",
                     "runs/..%2Foutside-run/", "runs/%2E%2E/", "runs/linked-run/", "runs/linked-run/loss.png",
                     "runs/nope/", f"runs/{RUN}/config.toml", "runs/.tiwiz-serve-0.json/"):
            assert fetch(server, path)[0] == 404, path
        for path in ("", "runs", "runs/", f"runs/{RUN}", f"runs/{RUN}/", f"runs/{RUN}/loss.png", "ws",
                     "static/js/textual.js"):
            fetch(server, path)
        assert _tree(tmp_path) == before
        # --previews-only: no wizard behind it
        assert fetch(server, "")[0] == 302 and fetch(server, "")[2] == "runs/"
        assert fetch(server, "runs")[2] == "runs/" and fetch(server, f"runs/{RUN}")[2] == f"{RUN}/"
        assert fetch(server, "ws")[0] == 404 and fetch(server, "static/js/textual.js")[0] == 404
    finally:
        server.stop()


def test_detach_and_stop(tmp_path):
    root = tmp_path / "runs"
    write_recorded_run(root / RUN, recorded_events("dog", steps=40, max_steps=40, finished=True), state="finished")
    env = serve_env(tmp_path, TIWIZ_TOKEN="detached-token-1")
    started = subprocess.run([str(TIWIZ), "serve", "--detach", "--port", "0", "--previews-only", "--runs", str(root)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    first = started.stdout.splitlines()[0]
    assert first.startswith("tiwiz serve: open http://localhost:") and first.endswith("?token=detached-token-1")
    base = first.split("open ", 1)[1].split("?")[0]
    (record,) = root.glob(".tiwiz-serve-*.json")
    pid = json.loads(record.read_text())["pid"]
    try:
        assert asyncio.run(_fetch(base + "runs/", "detached-token-1"))[0] == 200
        assert asyncio.run(_fetch(base + "runs/", "wrong-token-11"))[0] == 403
        log = next(root.glob(".tiwiz-serve-*.log"))
        assert log.stat().st_mode & 0o077 == 0  # its first line holds the token
        hint = links.where_to_see(root / RUN)
        assert f"{base}runs/{RUN}/" in hint
    finally:
        stopped = subprocess.run([str(TIWIZ), "serve", "--stop", "--runs", str(root)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not record.exists() and not is_server(pid)  # (a zombie at most, where nothing reaps orphans)
    assert "detached-token-1" not in "\n".join(log.read_text().splitlines()[1:])
    again = subprocess.run([str(TIWIZ), "serve", "--stop", "--runs", str(root)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no tiwiz server" in again.stderr


def test_loss_curve_png_draws_every_series():
    steps = [(s, 0.2 - s / 2000) for s in range(1, 101)] + [(101, 9.0)]  # a spike must not flatten the rest
    image = Image.open(io.BytesIO(loss_curve_png({"loss": steps, "smoothed": steps[:-1], "val": [(50, 0.17),
                                                   (100, 0.16)], "holdout": [(100, 0.18)]}, max_steps=200)))
    assert image.size == SIZE and image.mode == "RGB"
    colours = {colour for _, colour in image.getcolors(1 << 20)}
    assert all(colour in colours for _, _, colour, _ in SERIES)
    empty = Image.open(io.BytesIO(loss_curve_png({"loss": []})))
    assert empty.size == SIZE and len(empty.getcolors(1 << 20)) > 1  # says "no loss yet"
    nan = Image.open(io.BytesIO(loss_curve_png({"loss": [(1, float("nan")), (2, 0.1), (3, float("inf"))]})))
    assert nan.size == SIZE


def test_page_path_and_hint_without_a_server(tmp_path):
    root = tmp_path / "runs"
    assert links.page_path(root / "my cat", root) == "runs/my%20cat/"
    assert links.page_path(tmp_path / "elsewhere" / "x", root) is None
    hint = links.where_to_see(root / "x")
    assert f"tiwiz serve --previews-only --detach --runs {root}" in hint and "runs/x/" in hint


@pytest.mark.parametrize("stage", ["monitor", "finish"])
def test_o_in_the_terminal_says_where_to_see_the_previews(tmp_path, monkeypatch, stage):
    from tests.tui_support import freeze_cursor, wait_idle
    from tui.app import make_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    freeze_cursor(monkeypatch)
    run_dir = write_recorded_run(tmp_path / "runs" / RUN, recorded_events("dog", steps=40, max_steps=40,
                                                                          finished=True), state="finished")
    app = make_app(["--attach", str(run_dir), "--image-protocol", "halfcell"])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            if stage == "finish":
                await pilot.press("f")
                await wait_idle(pilot)
                assert type(app.screen).__name__ == "FinishScreen"
            await pilot.press("o")
            await wait_idle(pilot)
            return [n.message for n in app._notifications]

    messages = asyncio.run(drive())
    assert any(f"tiwiz serve --previews-only --detach --runs {run_dir.parent}" in m and f"runs/{RUN}/" in m
               for m in messages), messages
