"""`tiwiz serve` in a real browser: Debian's chromium, driven by playwright (the system browser; playwright downloads
nothing). The printed address opens the wizard, the keyboard drives it, the previews page shows real images; without
the token or with a wrong one the page, the websocket and the images are refused; and everything works behind a
reverse proxy that adds a path prefix."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.serve_support import TIWIZ, CAPTURE_SCRIPT, PrefixProxy, click_text, start_serve, wait_for_screen
from tests.tui_support import recorded_events, write_recorded_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TEXT = "Train a textual-inversion embedding"
MODEL_TEXT = "Model path"


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e .[test])"
    else:
        if os.path.exists(CHROMIUM):
            return
        reason = f"no chromium at {CHROMIUM} (.ci/run installs it: apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI installs both: a missing browser there is a broken setup, not a skip
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    run_dir = write_recorded_run(tmp / "runs" / "mycat-20250615-101010",
                                 recorded_events("mycat", steps=200, max_steps=200, finished=True), state="finished")
    from core.training.contact_sheet import write_contact_sheet

    write_contact_sheet(run_dir / "previews", "mycat")
    server = start_serve(tmp)
    yield server
    server.stop()


def _context(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    context.add_init_script(CAPTURE_SCRIPT)
    return context


def _images_decode(page) -> dict:
    page.wait_for_load_state("load")
    return page.evaluate("""() => Object.fromEntries([...document.images].map(
        (img) => [img.id || img.alt, img.complete && img.naturalWidth > 0]))""")


def _drive_wizard(page) -> None:
    """The start screen, then `n` (the model screen), then `escape` (back to the start screen)."""
    wait_for_screen(page, START_TEXT)
    page.click("#terminal")
    page.evaluate("window.__frames.length = 0")  # from here on, only what the keys made the app draw
    page.keyboard.press("n")
    screen = wait_for_screen(page, MODEL_TEXT)
    assert START_TEXT not in screen
    page.evaluate("window.__frames.length = 0")
    page.keyboard.press("Escape")
    wait_for_screen(page, START_TEXT)


def test_printed_address_opens_the_wizard_and_the_keyboard_drives_it(browser, served):
    context = _context(browser)
    page = context.new_page()
    response = page.goto(served.url)
    assert response.ok
    assert "token" not in page.url  # the redirect took it out of the address bar
    cookie = {c["name"]: c for c in context.cookies()}[f"tiwiz_token_{served.port}"]
    assert cookie["httpOnly"] and cookie["value"] == served.token
    _drive_wizard(page)
    sockets = page.evaluate("window.__sockets")
    assert sockets[0].startswith(served.base.replace("http:", "ws:") + "ws?")  # derived from the page's location
    # a second tab gets its own wizard; closing the first one leaves it working
    other = context.new_page()
    other.goto(served.base)
    wait_for_screen(other, START_TEXT)
    page.close()
    other.click("#terminal")
    other.keyboard.press("n")
    wait_for_screen(other, MODEL_TEXT)
    context.close()


def test_previews_page_shows_real_images(browser, served):
    context = _context(browser)
    page = context.new_page()
    page.goto(served.url)
    page.goto(served.base + "runs/")
    page.click("text=mycat-20250615-101010")
    assert page.url == served.base + "runs/mycat-20250615-101010/"
    decoded = _images_decode(page)
    assert decoded.pop("loss") and decoded.pop("sheet")
    assert decoded == {f"preview at step {s}": True for s in (200, 160, 120, 80, 40)}
    assert page.evaluate("document.getElementById('loss').naturalWidth") == 900
    context.close()


def _probe(page, base: str) -> dict:
    """From a page of the server's origin: does a websocket open, do the images load?"""
    return page.evaluate("""async (base) => {
        const ws = await new Promise((done) => {
            const socket = new WebSocket(base.replace(/^http/, "ws") + "ws?width=80&height=24");
            socket.onopen = () => { socket.close(); done("open"); };
            socket.onerror = () => done("refused");
        });
        const image = (src) => new Promise((done) => {
            const img = new Image();
            img.onload = () => done(img.naturalWidth);
            img.onerror = () => done(0);
            img.src = src;
        });
        const run = base + "runs/mycat-20250615-101010/";
        return {ws, loss: await image(run + "loss.png"), preview: await image(run + "previews/mycat-40.png"),
                sheet: await image(run + "previews/sheet.png")};
    }""", base)


@pytest.mark.parametrize("how", ["no token", "wrong token", "wrong cookie"])
def test_without_the_token_page_websocket_and_images_are_refused(browser, served, how):
    context = _context(browser)
    if how == "wrong cookie":
        context.add_cookies([{"name": f"tiwiz_token_{served.port}", "value": "x" + served.token[1:],
                              "url": served.base}])
    page = context.new_page()
    url = served.base + ("?token=" + served.token[:-1] + "x" if how == "wrong token" else "")
    response = page.goto(url)
    assert response.status == (401 if how == "no token" else 403)
    assert "needs the token" in page.inner_text("body") or "wrong token" in page.inner_text("body")
    assert page.locator("#terminal").count() == 0
    assert _probe(page, served.base) == {"ws": "refused", "loss": 0, "preview": 0, "sheet": 0}
    page.goto(served.url)  # the printed address still works in the same browser
    allowed = _probe(page, served.base)
    assert allowed["ws"] == "open" and allowed["loss"] == 900 and allowed["preview"] == 64 and allowed["sheet"] > 0
    context.close()


def test_behind_a_reverse_proxy_with_a_path_prefix(browser, served):
    proxy = PrefixProxy(served.base, prefix="tiwiz")
    try:
        context = _context(browser)
        page = context.new_page()
        page.goto(proxy.base + "?token=" + served.token)
        assert page.url == proxy.base
        _drive_wizard(page)
        assert page.evaluate("window.__sockets")[0].startswith(proxy.base.replace("http:", "ws:") + "ws?")
        page.goto(proxy.base + "runs/mycat-20250615-101010/")
        decoded = _images_decode(page)
        assert decoded and all(decoded.values()), decoded
        context.close()
    finally:
        proxy.close()


def _served_apps(runs) -> list[int]:
    """The pids of wizard processes textual-serve started for this runs folder."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    words = fh.read().split(b"\0")
            except OSError:
                continue
            if b"tui.main" in words and os.fsencode(str(runs)) in words:
                found.append(int(entry.name))
    return found


def test_training_started_in_the_browser_outlives_the_tab(browser, tmp_path, tiny_model_dir):
    """Continue to Training settings, start with ctrl+n and y; the monitor's `o` opens the run's previews page in a
    new tab; closing the wizard's tab ends its wizard process, never the training."""
    from core.runs import folder as runs
    from tests.serve_support import serve_env
    from tests.tui_support import copy_model, make_photos
    from tui.state import WizardState, save_state

    copy_model(tiny_model_dir, tmp_path / "model")
    make_photos(tmp_path / "photos", 2)
    save_state(WizardState(model=str(tmp_path / "model"), source=str(tmp_path / "photos"),
                           dataset=str(tmp_path / "photos"), skip_preprocess=True, name="zxq-cat", init_text="cat",
                           stage="training", train={"steps": "5000", "width": "64", "height": "64", "device": "cpu",
                                                    "preview_every": "0", "save_every": "0"}),
               tmp_path / "home" / "wizard.json")
    server = start_serve(tmp_path, env=serve_env(tmp_path))
    root = tmp_path / "runs"
    try:
        context = _context(browser)
        page = context.new_page()
        page.goto(server.url)
        wait_for_screen(page, START_TEXT)
        page.click("#terminal")
        page.keyboard.press("c")  # continue: Training settings
        wait_for_screen(page, "^n Next")  # Training settings, footer drawn
        click_text(page, "^n Next")  # a browser keeps ctrl+n (a new window) to itself: the footer's Next, clicked
        wait_for_screen(page, "Start training?")
        page.keyboard.press("y")
        wait_for_screen(page, "Full size", timeout=180)  # the monitor's footer
        (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
        with context.expect_page() as opened:
            page.keyboard.press("o")
        previews = opened.value
        previews.wait_for_load_state("load")
        assert previews.url == f"{server.base}runs/{run_dir.name}/"
        assert _images_decode(previews) == {"loss": True}
        assert len(_served_apps(root)) == 1
        page.close()
        deadline = time.monotonic() + 60
        while _served_apps(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _served_apps(root)  # the tab's wizard is gone ...
        info = runs.inspect_run(run_dir)
        assert info.alive and runs.pid_is_worker(info.pid, run_dir)  # ... its training is not
        context.close()
    finally:
        server.stop()
        for run_dir in root.iterdir() if root.is_dir() else ():
            if run_dir.is_dir():
                subprocess.run([str(TIWIZ), "stop", str(run_dir)], capture_output=True, timeout=180)
