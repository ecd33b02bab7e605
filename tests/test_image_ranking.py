"""The images that fight the concept, on the shipped world model (it knows colours and shapes, never a heart): 8 images
of the held-out concept (a yellow heart on purple) plus one planted odd image. A finished run ranks its images under
the final embedding and names the odd one first, with a reason; `tiwiz doctor --run` (a real subprocess) does the same
on demand; the Finish screen shows the flagged image with its thumbnail.

- another concept: a world image (a white cross on orange) among the hearts, no captions, template "[name]";
- a caption that names the concept: one heart captioned "a yellow heart on a purple background", the others
  uncaptioned, template "[name], [filewords]".
"""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from core.events import ListSink
from core.models.builtin import write_demo_model
from core.runs.run_state import RunState
from core.training.image_ranking import RANKING_FILE, read_ranking, robust_z
from core.training.trainer import Trainer
from core.world import shapes
from train_helpers import one_thread, tiny_config, write_template  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


def _concept_run(base: Path, odd: str) -> tuple[Path, list, Path]:
    """Train 2 vectors from "heart" on 8 hearts and the planted odd image; (run folder, events, the odd image)."""
    model = write_demo_model(base / "model")
    data = base / "data"
    data.mkdir(parents=True)
    for i, image in enumerate(shapes.concept_samples(0, 8)):
        image.save(data / f"heart-{i}.png")
        (data / f"heart-{i}.txt").write_text("")
    if odd == "subject":
        image, caption, _ = next(shapes.world_samples(5, 1))
        assert "heart" not in caption
        image.save(data / "odd.png")
        (data / "odd.txt").write_text("")
        planted, line = data / "odd.png", "[name]"
    else:
        (data / "heart-3.txt").write_text(shapes.CONCEPT_NAME)
        planted, line = data / "heart-3.png", "[name], [filewords]"
    template = write_template(base / "template.txt", line)
    config = tiny_config(model, data, template=str(template), vectors=2, init_text=shapes.CONCEPT_INIT_TEXT,
                         steps=80, lr="0.004", loss_weighting="velocity", batch_size=4, holdout=0)
    sink = ListSink()
    assert Trainer(config, base / "run", sink).run().finished
    return base / "run", sink.events, planted


@pytest.fixture(scope="module")
def odd_subject(tmp_path_factory, one_thread):  # noqa: F811 (fixture)
    return _concept_run(tmp_path_factory.mktemp("odd-subject"), "subject")


def test_the_run_ranks_another_concept_first(odd_subject):
    run, events, planted = odd_subject
    ranking = read_ranking(run)
    assert ranking is not None and ranking.step == 80 and len(ranking.images) == 9
    assert ranking.images[0].image == str(planted)
    assert [im.image for im in ranking.flagged] == [str(planted)]  # the hearts are not flagged
    top = ranking.images[0]
    assert top.reason == "subject" and "different subject" in top.message
    assert top.gain < 0 < min(im.gain for im in ranking.images[1:])  # the embedding fits it worse than none at all
    ranked = [e for e in events if e["type"] == "images_ranked"]
    assert len(ranked) == 1 and ranked[0]["flagged"] == [str(planted)] and ranked[0]["path"] == RANKING_FILE
    assert [e["type"] for e in events][-1] == "finished"  # ranked before the run says it finished
    assert RunState.fold(events).flagged_images == [(str(planted), top.message)]


def test_doctor_run_ranks_a_caption_that_names_the_concept_first(tmp_path):
    run, _, planted = _concept_run(tmp_path, "caption")
    (run / RANKING_FILE).unlink()  # what the run wrote at its end: doctor --run writes it again
    text = subprocess.run([sys.executable, "-m", "core.cli", "doctor", "--run", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert text.returncode == 0, text.stderr
    ranking = read_ranking(run)
    top = ranking.images[0]
    assert top.image == str(planted) and top.flagged and top.reason == "caption"
    assert "'heart'" in top.message and "caption" in top.message
    assert top.loss_bare is not None and all(im.loss_bare is None for im in ranking.images[1:])
    lines = text.stdout.splitlines()
    assert str(planted) in lines[1] and top.message in lines[2] and "1 image(s) fight the concept" in lines[-1]


def test_the_finish_screen_shows_the_flagged_image(odd_subject, tmp_path, monkeypatch):
    from tests.tui_support import console_app, console_home, continue_saved, wait_idle
    from tui.state import WizardState
    from tui.widgets.image_preview import ImagePreview

    run, _, planted = odd_subject
    console_home(tmp_path, monkeypatch)

    async def drive():
        app = console_app(saved=WizardState(stage="finish", name="tcat", run_dir=str(run)))
        async with app.run_test(size=(100, 40)) as pilot:
            await continue_saved(pilot, "finish")
            await wait_idle(pilot)
            screen = app.screen
            assert screen.query_one("#fin-fight-label").display
            texts = " ".join(str(w.content) for w in screen.query("#fin-fight .fight-text"))
            assert "odd.png" in texts and "different subject" in texts and "heart-" not in texts
            thumbs = list(screen.query("#fin-fight ImagePreview"))
            assert len(thumbs) == 1 and thumbs[0].path == planted
            for _ in range(100):
                if thumbs[0].thumb is not None:
                    break
                await pilot.pause(0.05)
            assert thumbs[0].thumb is not None and not thumbs[0].error

    asyncio.run(drive())


def test_robust_z_ignores_the_outlier_it_measures():
    z = robust_z([1.0, 1.1, 0.9, 1.05, 0.95, 9.0])
    assert z[-1] > 20 and all(abs(v) < 1.5 for v in z[:-1])
