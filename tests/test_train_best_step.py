"""The suggested best step of a run without a hold-out: where the auto-stop rule found the validation loss flat, else
(the rule never fired) the checkpointed step with the lowest validation loss; always labelled by its basis, kept
across a resume (also of a run from before the basis existed), and shown by `tiwiz runs` and `tiwiz attach`. And the
warning when validation is too sparse for the auto-stop rule to fire at all."""

from __future__ import annotations

import io

import pytest

from core.events import ListSink
from core.runs import run_events as ev
from core.runs.lossfile import COLUMNS, OLD_HEADER, read_loss_csv
from core.training.autostop import AutoStop, unreachable_reason
from core.training.resume_state import load_state, save_state
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def typed(sink: ListSink) -> list:
    return [ev.parse(e) if isinstance(e, dict) else e for e in sink.events]


def train(cfg, out, resume=False):
    sink = ListSink()
    summary = Trainer(cfg, out, sink).run(resume=resume)
    return summary, typed(sink)


def test_without_holdout_or_a_flat_loss_the_best_is_the_checkpoint_with_the_lowest_validation_loss(tiny_model_dir,
                                                                                                   tmp_path):
    data = make_images(tmp_path / "data", n=4)  # under 8 images: no hold-out
    out = tmp_path / "run"
    summary, events = train(tiny_config(tiny_model_dir, data, steps=6, validate_every=1, save_every=2, lr="0.05"),
                            out)
    rows = read_loss_csv(out / "loss.csv")
    saved = {2, 4, 6}
    best_val, best = min((r["val_loss"], r["step"]) for r in rows if r["step"] in saved)
    assert all(r["holdout_loss"] is None for r in rows)
    end = next(e for e in events if isinstance(e, ev.Finished))
    assert (end.best_step, end.best_basis) == (best, "validation") == (summary.best_step, summary.best_basis)
    assert end.best_checkpoint == f"embeddings/tcat-{best}.safetensors" and (out / end.best_checkpoint).is_file()
    # the lowest validation loss overall may fall on a step without a checkpoint: never suggested
    assert best_val == min(r["val_loss"] for r in rows if r["step"] in saved)
    checkpoints = [e for e in events if isinstance(e, ev.Checkpoint)]
    assert all(c.best_basis == "validation" and c.best_step in saved and c.best_step <= c.step for c in checkpoints)
    vals = [e for e in events if isinstance(e, ev.Validation)]
    assert vals[0].best_step is None and vals[0].best_basis is None  # nothing saved yet: no suggestion
    assert ev.best_step_text(end.best_step, end.best_basis) == f"best step {best} (lowest validation loss)"


def test_a_flat_validation_loss_is_the_best_step_and_gets_a_checkpoint(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=4)
    out = tmp_path / "run"
    # auto_stop off: the rule runs advisory; a loose threshold makes it fire within a short run
    cfg = tiny_config(tiny_model_dir, data, steps=14, validate_every=1, auto_stop_window=5, auto_stop_threshold=0.9,
                      lr="0.001")
    summary, events = train(cfg, out)
    vals = [e for e in events if isinstance(e, ev.Validation)]
    fired = vals[-1].auto_stop_fired_at
    assert fired is not None, [v.auto_stop_ratio for v in vals]
    end = next(e for e in events if isinstance(e, ev.Finished))
    assert end.step == 14 and (end.best_step, end.best_basis) == (fired, "flat")
    assert (out / end.best_checkpoint).is_file()  # saved where the rule fired, though save_every is 0
    assert not any(isinstance(e, ev.Warning) and "auto-stop" in e.message for e in events)


def test_resume_keeps_the_best_step_and_an_old_run_resumes_with_its_old_loss_csv(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=4)
    opts = dict(validate_every=2, save_every=2, lr="0.05")
    out = tmp_path / "run"
    first, _ = train(tiny_config(tiny_model_dir, data, steps=4, **opts), out)
    assert first.best_basis == "validation" and first.best_step in (2, 4)

    # Make it a run written before `holdout_loss` and `best_val_checkpoint` existed: 6-column loss.csv, no key.
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    old_rows = [",".join(line.split(",")[:len(OLD_HEADER.split(","))]) for line in lines[1:]]
    (out / "loss.csv").write_text("\n".join([OLD_HEADER] + old_rows) + "\n")
    before = read_loss_csv(out / "loss.csv")
    assert [r["step"] for r in before] == [0, 1, 2, 3, 4] and all(r["holdout_loss"] is None for r in before)
    state = load_state(out / "state" / "latest.pt")
    assert state.pop("best_val_checkpoint")[0] == first.best_step
    save_state(out / "state" / "latest.pt", state)

    # A later life: the best step known at its first validation (step 6, before step 6 is saved) is the first life's.
    _, events = train(tiny_config(tiny_model_dir, data, steps=8, **opts), out, resume=True)
    val6 = next(e for e in events if isinstance(e, ev.Validation) and e.step == 6)
    assert (val6.best_step, val6.best_basis) == (first.best_step, "validation")
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)  # rewritten in the current layout on resume
    after = read_loss_csv(out / "loss.csv")
    assert [r["step"] for r in after] == list(range(9))
    assert [{k: r[k] for k in OLD_HEADER.split(",")} for r in after[:5]] == \
           [{k: r[k] for k in OLD_HEADER.split(",")} for r in before]
    assert all(line.count(",") == len(COLUMNS) - 1 for line in lines)

    # and a resume of a current run keeps it from the state
    _, events = train(tiny_config(tiny_model_dir, data, steps=10, **opts), out, resume=True)
    end = next(e for e in events if isinstance(e, ev.Finished))
    rows = read_loss_csv(out / "loss.csv")
    expected = min((r["val_loss"], r["step"]) for r in rows if r["step"] in (2, 4, 6, 8, 10))[1]
    assert (end.best_step, end.best_basis) == (expected, "validation")


def test_runs_and_attach_show_the_best_step_with_its_basis(tiny_model_dir, tmp_path):
    from core.cli.progress import ProgressView
    from core.cli.runs import runs_table
    from core.runs import folder as runs
    from core.runs.api import prepare_run
    from core.runs.worker import train_in_process

    data = make_images(tmp_path / "data", n=4)
    cfg = tiny_config(tiny_model_dir, data, steps=4, validate_every=2, save_every=2, output=str(tmp_path / "r" / "a"))
    run_dir = prepare_run(cfg).output
    assert train_in_process(run_dir) == 0
    info = runs.inspect_run(run_dir)  # from status.json
    assert info.best_basis == "validation" and info.best_step in (2, 4)
    table = runs_table([info])
    assert table[0].split()[-1] == "BEST" and table[1].endswith(f"{info.best_step} (val loss)")
    out = io.StringIO()
    view = ProgressView(run_dir, out=out, tty=False)
    view.replay(runs.read_events(run_dir)[0])  # what `tiwiz attach` does first
    text = out.getvalue()
    assert f"suggested best step {info.best_step} (lowest validation loss)" in text
    assert view.state.best_label == f"best step {info.best_step} (lowest validation loss)"


@pytest.mark.parametrize("changes, words", [
    (dict(validate_every=3, auto_stop_window=10, steps=4), ["validate_every 3 gives 4 validation points",
                                                            "auto_stop_window to 15 or more"]),
    (dict(validate_every=1, auto_stop_window=100, steps=4), ["ends at step 4", "auto_stop_window"]),
])
def test_auto_stop_that_cannot_fire_is_said_once_at_start(tiny_model_dir, tmp_path, changes, words):
    data = make_images(tmp_path / "data", n=2)
    _, events = train(tiny_config(tiny_model_dir, data, auto_stop=True, **changes), tmp_path / "run")
    warnings = [e.message for e in events if isinstance(e, ev.Warning) and "auto-stop cannot fire" in e.message]
    assert len(warnings) == 1 and all(w in warnings[0] for w in words), warnings
    end = next(e for e in events if isinstance(e, ev.Finished))
    assert end.reason == "steps"


def test_unreachable_reason_agrees_with_the_rule():
    """Fed a drop then a flat loss, the rule fires as soon as it can: exactly where unreachable_reason says it can."""
    for every in range(1, 13):
        for window in range(2, 40, 3):
            for end in range(1, 90, 4):
                rule, fired = AutoStop(window, 0.15), False
                for step in range(0, end + 1, every):
                    fired = rule.update(step, 10.0 if step == 0 else 1.0).stop or fired
                assert fired == (unreachable_reason(every, window, end) is None), (every, window, end)
    assert "validate_every = 0" in unreachable_reason(0, 100, 1000)
