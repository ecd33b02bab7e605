"""The wizard's rough edges at 80x24: first rows highlighted, run details, found-model paths, Training tab keys,
help text shown literally, the doctor's findings listed, the captions header kept current, Tab completion of paths,
trees that go above their start folder, dialogs that wrap."""

from __future__ import annotations

import os

from tests.tui_support import (drive, gradient_png, make_photos, recorded_events, wait_idle, write_embedding,
                               write_recorded_run)
from tui.app import TiwizApp
from tui.state import WizardState
from tui.widgets.inputs import complete_path

SIZE = (80, 24)


def screen_text(app) -> str:
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


def test_start_highlights_the_first_row_and_tells_runs_apart(tmp_path):
    runs = tmp_path / "runs"
    write_recorded_run(runs / "cat-1", recorded_events("cat", steps=5), state="running")
    write_recorded_run(runs / "cat-2", recorded_events("cat", steps=9, finished=True), state="finished")
    app = TiwizApp(state=WizardState(), save=False, runs_root=runs, finder_roots=[])
    app.check_liveness = False

    async def body(pilot):
        from textual.widgets import DataTable

        table = app.screen.query_one("#runs", DataTable)
        assert table.row_count == 2 and len(table.columns) == 5  # run, state, step, loss, age
        detail = str(app.screen.query_one("#runs-detail").content)
        first = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        assert first in detail
        table.move_cursor(row=1)
        await wait_idle(pilot)
        second = str(app.screen.query_one("#runs-detail").content)
        assert second != detail and str(runs) in second
        app.screen.query_one("#start-menu").focus()
        await wait_idle(pilot)
        await pilot.press("enter")  # the first row, "New embedding", is highlighted
        await wait_idle(pilot)
        assert app.screen.STAGE == "model"
    drive(app, body, SIZE)


def test_model_list_shows_paths_and_highlights_the_first(tmp_path, tiny_model_dir):
    import shutil

    for where in ("a", "b"):
        shutil.copytree(tiny_model_dir, tmp_path / where / "stable-diffusion-webui" / "models" / "Stable-diffusion"
                        / "tiny")
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", start_stage="model",
                   finder_roots=[tmp_path / "a", tmp_path / "b"])

    async def body(pilot):
        from textual.widgets import OptionList

        found = app.screen.query_one("#found", OptionList)
        prompts = [str(found.get_option_at_index(i).prompt) for i in range(found.option_count)]
        assert found.option_count >= 1 and found.highlighted is not None
        assert all(str(tmp_path) in p for p in prompts)
        if found.option_count == 2:
            assert prompts[0] != prompts[1]
    drive(app, body, SIZE)


def test_training_tabs_have_a_key_and_help_is_literal(tmp_path):
    make_photos(tmp_path / "photos", 2)
    state = WizardState(model=str(tmp_path / "m"), dataset=str(tmp_path / "photos"), name="zxq-cat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="training", finder_roots=[])

    async def body(pilot):
        from textual.widgets import TabbedContent

        tabs = app.screen.query_one("#tr-tabs", TabbedContent)
        assert tabs.active == "tab-basic" and "f2" in screen_text(app).splitlines()[-1]
        await pilot.press("f2")
        await wait_idle(pilot)
        assert tabs.active == "tab-preview" and app.focused.id.startswith("tr-preview")
        helps = [str(w.content) for w in app.screen.query(".form-help")]
        assert any("[name]" in h for h in helps)  # not eaten as markup
        await pilot.press("f2", "f2")
        await wait_idle(pilot)
        assert tabs.active == "tab-basic"
    drive(app, body, SIZE)


def test_captions_list_findings_and_keep_the_count_current(tmp_path):
    ds = tmp_path / "ds"
    for i in range(3):
        gradient_png(ds / f"img{i}.png", i)
    (ds / "img1.txt").write_text("a red square")
    app = TiwizApp(state=WizardState(dataset=str(ds)), save=False, runs_root=tmp_path / "runs",
                   start_stage="captions", finder_roots=[])

    async def body(pilot):
        count = app.screen.query_one("#cap-count")
        assert "2 uncaptioned" in str(count.content)
        await pilot.press(*"a blue square", "enter")
        await wait_idle(pilot)
        assert "1 uncaptioned" in str(count.content)  # recounted when a caption is written
        await pilot.press("f5")
        await wait_idle(pilot)
        panel = app.screen.query_one("#cap-all-findings")
        assert panel.display and "img2.png" in str(panel.content)
        await pilot.press("f5")
        await wait_idle(pilot)
        assert not panel.display
    drive(app, body, SIZE)
    assert (ds / "img0.txt").read_text() == "a blue square"


def test_complete_path(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "v15.safetensors").write_bytes(b"")
    (tmp_path / "models" / "v20.safetensors").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    assert complete_path(str(tmp_path / "mo")) == str(tmp_path / "models") + "/"
    assert complete_path(str(tmp_path / "models") + "/v") is None  # two matches, no longer common prefix
    assert complete_path(str(tmp_path / "models") + "/v1") == str(tmp_path / "models" / "v15.safetensors")
    assert complete_path(str(tmp_path / "nothing")) is None and complete_path("") is None


def test_tab_completes_a_path_field_and_trees_go_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work" / "photos").mkdir(parents=True)
    os.chdir(tmp_path / "work")
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", start_stage="folders",
                   finder_roots=[])

    async def body(pilot):
        await pilot.press(*"pho", "tab")
        await wait_idle(pilot)
        assert app.screen.query_one("#source").value == "photos/"
        await pilot.press("tab")  # nothing more to complete: Tab moves on
        await wait_idle(pilot)
        assert app.focused.id != "source"
        from tui.screens.folders import FolderTree

        tree = app.screen.query_one(FolderTree)
        tree.focus()
        await wait_idle(pilot)
        await pilot.press("backspace")
        await wait_idle(pilot)
        assert os.path.realpath(str(tree.path)) == os.path.realpath(str(tmp_path))
    drive(app, body, SIZE)


def test_confirmation_dialogs_wrap_at_80_columns(tmp_path):
    from tui.screens.dialogs import ConfirmModal

    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", finder_roots=[])
    long = "/workspace/stable-diffusion-webui/embeddings/a-rather-long-embedding-name-v2-final.safetensors exists."

    async def body(pilot):
        app.push_screen(ConfirmModal(long + " Replace it with the new one from this run?"))
        await wait_idle(pilot)
        lines = [line.strip(" ▊▎▌█▐▕▏│┃") for line in screen_text(app).splitlines()]
        text = " ".join(" ".join(lines).split())
        assert "Replace it with the new one from this run?" in text, screen_text(app)
    drive(app, body, SIZE)


def test_an_invalid_compact_field_keeps_its_value_visible(tmp_path):
    make_photos(tmp_path / "photos", 2)
    state = WizardState(model=str(tmp_path / "m"), dataset=str(tmp_path / "photos"), name="zxq-cat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="training", finder_roots=[])

    async def body(pilot):
        await pilot.press("ctrl+u", *"0")
        await wait_idle(pilot)
        field = app.screen.query_one("#tr-steps")
        assert field.has_class("-invalid")
        row = screen_text(app).splitlines()[field.region.y]
        assert "steps" in row and " 0" in row  # the value still shows beside its label
    drive(app, body, SIZE)


def test_finish_shows_real_absolute_paths_the_sheet_and_copies_with_c(tmp_path, monkeypatch):
    from core.training.contact_sheet import write_contact_sheet

    monkeypatch.chdir(tmp_path)
    run = write_recorded_run(tmp_path / "runs" / "mycat-1", recorded_events("mycat", steps=80, finished=True),
                             state="finished")
    write_embedding(run / "mycat")
    (run / "config.toml").write_text('model = "/models/real/v1-5.safetensors"\nname = "mycat"\n')
    write_contact_sheet(run / "previews", "mycat")
    webui = tmp_path / "stable-diffusion-webui" / "embeddings"
    webui.mkdir(parents=True)
    state = WizardState(model="models/tiny", name="mycat", run_dir="runs/mycat-1")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="finish",
                   finder_roots=[tmp_path])

    async def body(pilot):
        snippet = str(app.screen.query_one("#fin-snippet").content)
        assert '"/models/real/v1-5.safetensors"' in snippet and "from_single_file" in snippet
        files = str(app.screen.query_one("#fin-files").content)
        assert str(run / "mycat.safetensors") in files and str(run / "mycat.pt") in files
        assert app.screen.query_one("#fin-sheet").display
        assert "Next" not in screen_text(app).splitlines()[-1]
        await pilot.press("c")
        await wait_idle(pilot)
    drive(app, body, SIZE)
    assert sorted(p.name for p in webui.iterdir()) and any(p.name.startswith("mycat.") for p in webui.iterdir())


def test_a_refused_next_message_goes_once_the_field_is_edited(tmp_path):
    app = TiwizApp(state=WizardState(name="zxq-cat", vectors=1), save=False, runs_root=tmp_path / "runs",
                   start_stage="embedding", finder_roots=[])

    async def body(pilot):
        message = app.screen.query_one("#message")
        app.screen.query_one("#emb-vectors").value = "0"
        await wait_idle(pilot)
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        assert "between 1 and 75" in str(message.content) and message.has_class("visible")
        app.screen.query_one("#emb-vectors").value = "2"
        await wait_idle(pilot)
        assert not message.has_class("visible")
    drive(app, body, SIZE)


def test_training_below_80_columns_keeps_help_readable(tmp_path):
    make_photos(tmp_path / "photos", 2)
    state = WizardState(model=str(tmp_path / "m"), dataset=str(tmp_path / "photos"), name="zxq-cat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="training", finder_roots=[])

    async def body(pilot):
        assert not app.screen.query_one("#tr-side").display
        widths = [w.region.width for w in app.screen.query(".form-help") if w.region.width]
        assert widths and min(widths) >= 30
        await pilot.resize_terminal(100, 30)
        await wait_idle(pilot)
        assert app.screen.query_one("#tr-side").display
    drive(app, body, (60, 20))


def test_preprocess_skip_reasons_wrap_at_80_columns(tmp_path):
    make_photos(tmp_path / "photos", 1)
    (tmp_path / "photos" / "a-broken-photo-with-a-long-name.png").write_bytes(b"not a png at all")
    state = WizardState(model=str(tmp_path / "m"), source=str(tmp_path / "photos"), dataset=str(tmp_path / "ds"))
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="preprocess", finder_roots=[])

    async def body(pilot):
        await pilot.press("ctrl+r")
        await wait_idle(pilot, timeout=120)
        log = app.screen.query_one("#pp-skipped")
        lines = [str(strip.text).rstrip() for strip in log.lines]
        assert "a-broken-photo-with-a-long-name.png:" in "".join("".join(lines).split())  # wrapped, whole
        assert all(len(line) <= log.region.width for line in lines) and len(lines) >= 2, (log.region, lines)
    drive(app, body, SIZE)
