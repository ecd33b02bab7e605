"""What the wizard says about a run's settings and its end, started as `tiwiz`: auto-stop that cannot fire and a
preview prompt without the embedding are said on Training settings (issue 25 items 11, 12); auto-stop off reads "off"
on the monitor (11); its header names the model's family (13); ctrl+q on a training run prints how to come back (10);
a finished run leads back to Training settings (21); an upscale is called one (13)."""

from __future__ import annotations

from core.runs import run_events as ev
from tests.tui_support import (T0, burst, console_app, continue_saved, drive, message_text, until, wait_idle,
                               write_recorded_run)
from tui.state import WizardState


def at_training(wizard_home, **train) -> WizardState:
    return WizardState(stage="training", model=str(wizard_home / "model"), source=str(wizard_home / "photos"),
                       dataset=str(wizard_home / "photos"), skip_preprocess=True, name="zxq-cat", init_text="cat",
                       train=train)


def test_auto_stop_that_cannot_fire_is_said_on_training_settings(wizard_home):
    app = console_app(saved=at_training(wizard_home, auto_stop=True, steps="300"))

    async def body(pilot):
        await continue_saved(pilot, "training")
        assert "Auto-stop" not in message_text(app)
        await burst(pilot, "ctrl+u", *"50")  # steps 50: the run ends before a full window of 100
        assert "Auto-stop cannot fire" in message_text(app) and "train all 50 steps" in message_text(app)
    drive(app, body)


def test_load_toml_says_when_the_preview_prompt_leaves_the_embedding_out(wizard_home):
    (wizard_home / "lazy.toml").write_text('steps = 200\npreview_prompt = "a photo of a cat"\n')
    app = console_app(saved=at_training(wizard_home))

    async def body(pilot):
        await continue_saved(pilot, "training")
        await burst(pilot, "ctrl+l", "ctrl+u", *str(wizard_home / "lazy.toml"), "enter")
        await until(pilot, lambda: "Loaded" in message_text(app), 30, "the load")
        assert "neither [name] nor “zxq-cat”" in message_text(app)
        assert app.screen.query_one("#tr-steps").value == "200"
    drive(app, body)


def run_events(auto_stop: bool, finished: bool) -> list[dict]:
    events = [ev.Started(time=T0, max_steps=400, name="zxq-cat", device="cpu", precision="fp32", n_images=2,
                         model="model", family="sdxl", auto_stop=auto_stop)]
    for step in range(1, 41):
        events.append(ev.Step(time=T0 + step, step=step, max_steps=400, loss=0.1, lr=0.005, it_s=2.0))
        if step % 20 == 0:
            events.append(ev.Validation(time=T0 + step, step=step, val_loss=0.12, auto_stop_window=100,
                                        auto_stop_threshold=0.15, auto_stop_watched=step))
    if finished:
        events.append(ev.Finished(time=T0 + 41, step=40, pt="zxq-cat.pt", safetensors="zxq-cat.safetensors"))
    return [e.to_json() for e in events]


def test_the_monitor_says_auto_stop_off_and_the_family_and_ctrl_q_says_how_to_come_back(wizard_home):
    run = write_recorded_run(wizard_home / "runs" / "zxq-cat-1", run_events(auto_stop=False, finished=False))
    app = console_app(["--attach", str(run)])
    app.check_liveness = False  # no worker behind the recorded run: keep it "running"

    async def body(pilot):
        await until(pilot, lambda: app.screen.view.step == 40, 30, "the history")
        await wait_idle(pilot)
        quality = str(app.screen.query_one("#mon-quality").render())
        assert "auto-stop: off" in quality and "watching" not in quality
        assert "SDXL" in str(app.screen.query_one("#mon-header").render())
        await burst(pilot, "ctrl+q")
    drive(app, body)
    assert f"tiwiz attach {run}" in app.exit_message


def test_a_finished_run_leads_back_to_training_settings(wizard_home):
    run = write_recorded_run(wizard_home / "runs" / "zxq-cat-1", run_events(auto_stop=True, finished=True),
                             state="finished")
    (run / "config.toml").write_text(f'model = "{wizard_home / "model"}"\ndata = "{wizard_home / "photos"}"\nname = "zxq-cat"\n'
                                     'init_text = "cat"\nsteps = 400\nlr = "0.003"\nauto_stop = true\n')
    app = console_app(["--attach", str(run)])

    async def body(pilot):
        await until(pilot, lambda: app.screen.view.step == 40, 30, "the history")
        await burst(pilot, "f")
        assert app.screen.STAGE == "finish"
        await burst(pilot, "t")
        await until(pilot, lambda: getattr(app.screen, "STAGE", "") == "training", 30, "Training settings")
        await wait_idle(pilot)
        assert app.screen.query_one("#tr-steps").value == "400"
        assert app.screen.query_one("#tr-lr").value == "0.003"
        assert (app.state.name, app.state.dataset) == ("zxq-cat", str(wizard_home / "photos"))
        assert "Next starts a new run" in message_text(app)
    drive(app, body)


def test_an_upscale_is_said():
    from core.training.config import TrainConfig
    from tui.bucket_scan import fit_text

    config = TrainConfig(width=1024, height=1024)
    assert fit_text(config, (512, 512)) == "upscaled 2.0× and centre-cropped to 1024×1024 (from 512×512)"
    assert fit_text(config, (1000, 1100)).startswith("upscaled 1.02×")
    assert fit_text(config, (2048, 1024)) == "centre crop to 1024×1024 (from 2048×1024)"
