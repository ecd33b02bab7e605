"""`optimizer`: AdamW (default), Prodigy (optional package) and 8-bit AdamW (bitsandbytes + CUDA), with clear
messages where one cannot run."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training.optimizers import check_available, lr_warning, make_optimizer
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_is_torchs_with_no_weight_decay():
    p = torch.nn.Parameter(torch.zeros(2, 4))
    opt = make_optimizer("adamw", [p], 0.01)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.0


def test_missing_prodigy_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # what an uninstalled package looks like to import
    with pytest.raises(TiwizError, match=r"^optimizer: prodigy needs the prodigyopt package: pip install prodigyopt"):
        check_available("prodigy", "cpu")


def test_adamw8bit_needs_cuda():
    with pytest.raises(TiwizError, match=r"^optimizer: adamw8bit \(bitsandbytes\) needs a CUDA GPU"):
        check_available("adamw8bit", "cpu")


def test_missing_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(TiwizError, match="pip install bitsandbytes"):
        check_available("adamw8bit", "cuda")


def test_prodigy_lr_warning():
    assert lr_warning("prodigy", "0.005") and "lr 1" in lr_warning("prodigy", "0.005")
    assert lr_warning("prodigy", "1") is None and lr_warning("adamw", "0.005") is None


def test_prodigy_trains_and_resumes_exactly(tiny_model_dir, tmp_path):
    pytest.importorskip("prodigyopt")
    data = make_images(tmp_path / "data", n=2)
    opts = dict(optimizer="prodigy", lr="1", save_every=2, steps=4)
    straight = tmp_path / "straight"
    sink = ListSink()
    Trainer(tiny_config(tiny_model_dir, data, **opts), straight, sink).run()
    start = torch.load(straight / "embeddings" / "tcat-2.pt", weights_only=True)["string_to_param"]["*"]
    end = torch.load(straight / "tcat.pt", weights_only=True)["string_to_param"]["*"]
    assert not torch.equal(start, end)  # Prodigy moved the vectors
    state = torch.load(straight / "state" / "latest.pt", weights_only=True)
    assert "d" in state["optimizer"]["param_groups"][0]  # Prodigy's step-size estimate travels with the state

    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, **opts), split, ListSink())
    first.poll_commands = lambda: ["stop"] if first.session.step == 2 else []
    first.run()
    Trainer(tiny_config(tiny_model_dir, data, **opts), split, ListSink()).run(resume=True)
    again = torch.load(split / "tcat.pt", weights_only=True)["string_to_param"]["*"]
    torch.testing.assert_close(again, end, rtol=0, atol=1e-6)


def test_unknown_optimizer_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(TiwizError, match="^optimizer: must be one of adamw, prodigy, adamw8bit"):
        tiny_config(tiny_model_dir, tmp_path, optimizer="sgd")


# ---- found before any worker starts (core.training.preflight): the CLI, the queue and the wizard ------------------
ROOT = str(Path(__file__).resolve().parents[1])
NO_PRODIGY = "import sys; sys.modules['prodigyopt'] = None; from core.cli import main; sys.exit(main())"  # as if missing


def preflight_config(tmp_path, **changes):
    from core.training.config import TrainConfig

    make_images(tmp_path / "data", n=1)
    base = dict(model=str(tmp_path), data=str(tmp_path / "data"), name="zxq-cat", steps=2, device="cpu")
    return TrainConfig.from_dict({**base, **changes}, validate=False)


def test_preflight_names_the_optimizer_and_how_to_install_it(tmp_path, monkeypatch):
    from core.training.preflight import problems

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    (found,) = problems(preflight_config(tmp_path, optimizer="adamw8bit"))
    assert found.startswith("optimizer: adamw8bit (bitsandbytes) needs a CUDA GPU, and this run is on cpu")
    (found,) = problems(preflight_config(tmp_path, optimizer="adamw8bit", device="auto"), cli=True, cuda=lambda: False)
    assert found.startswith("--optimizer: adamw8bit (bitsandbytes) needs a CUDA GPU")
    for cuda in (lambda: True, lambda: None):  # CUDA here, or not known (the TUI's first check): the package
        (found,) = problems(preflight_config(tmp_path, optimizer="adamw8bit", device="auto"), cuda=cuda)
        assert found == ("optimizer: adamw8bit needs the bitsandbytes package: pip install bitsandbytes "
                         "(or pip install 'tiwiz[bnb]'), or choose adamw")
    (found,) = problems(preflight_config(tmp_path, optimizer="prodigy"))
    assert found == ("optimizer: prodigy needs the prodigyopt package: pip install prodigyopt "
                     "(or pip install 'tiwiz[prodigy]'), or choose adamw")
    asked = []
    assert problems(preflight_config(tmp_path, optimizer="adamw", device="auto"), cuda=lambda: asked.append(1)) == []
    assert asked == []  # CUDA is asked only when an answer matters
    monkeypatch.delitem(sys.modules, "prodigyopt")
    if importlib.util.find_spec("prodigyopt") is not None:
        assert problems(preflight_config(tmp_path, optimizer="prodigy")) == []


def test_the_extras_named_exist_in_pyproject():
    import tomllib

    from core.training.optimizers import EXTRAS

    extras = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for package, extra in EXTRAS.values():
        assert any(dep.startswith(package) for dep in extras[extra]), (extra, extras.get(extra))


def test_preflight_finds_the_package_without_importing_it_or_torch():
    code = ("import sys; from core.training.preflight import optimizer_problem; "
            "print(optimizer_problem('prodigy', 'auto', cuda=lambda: None), "
            "'torch' in sys.modules, 'prodigyopt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]


def tiwiz(args, runs, code=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
           "TIWIZ_RUNS_DIR": str(runs)}
    launcher = ["-c", code] if code else ["-m", "core.cli"]
    return subprocess.run([sys.executable, *launcher, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", ["adamw8bit", "prodigy-missing"])
def test_train_detach_refuses_an_unavailable_optimizer_before_starting_a_worker(tiny_model_dir, tmp_path, case):
    data = make_images(tmp_path / "data", n=1)
    runs = tmp_path / "runs"
    optimizer = "adamw8bit" if case == "adamw8bit" else "prodigy"
    done = tiwiz(["train", "--model", tiny_model_dir, "--data", data, "--name", "zxq-cat", "--steps", "2",
                  "--optimizer", optimizer, "--lr", "1", "--detach"], runs,
                 code=NO_PRODIGY if case == "prodigy-missing" else None)
    assert done.returncode != 0
    assert f"--optimizer: {optimizer}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert ("CUDA" in done.stderr or "bitsandbytes" in done.stderr) if case == "adamw8bit" else \
        "pip install 'tiwiz[prodigy]'" in done.stderr
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no worker


def test_queue_add_refuses_an_unavailable_optimizer(tmp_path):
    from core.queue.jobs import list_jobs

    data = make_images(tmp_path / "data", n=1)
    model = tmp_path / "model"
    model.mkdir()  # `add` checks that it exists; nothing loads it
    runs = tmp_path / "runs"
    config = tmp_path / "cat.toml"
    config.write_text(f'model = "{model}"\ndata = "{data}"\nname = "zxq-cat"\noptimizer = "prodigy"\nlr = "1"\n')
    done = tiwiz(["queue", "add", config], runs, code=NO_PRODIGY)
    assert done.returncode != 0 and "optimizer: prodigy needs the prodigyopt package" in done.stderr, done.stderr
    done = tiwiz(["queue", "add", config, "--set", "optimizer=adamw8bit", "--set", "device=cpu"], runs)
    assert done.returncode != 0 and "optimizer: adamw8bit (bitsandbytes) needs a CUDA GPU" in done.stderr
    assert list_jobs(runs / "queue") == []
    assert tiwiz(["queue", "add", config, "--set", "optimizer=adamw"], runs).returncode == 0  # the rest was fine
    assert [j.name for j in list_jobs(runs / "queue")] == ["zxq-cat"]


@pytest.mark.parametrize("train, words", [({"optimizer": "adamw8bit"}, "optimizer: adamw8bit"),
                                          ({"optimizer": "prodigy", "lr": "1"}, "optimizer: prodigy needs the "
                                                                                "prodigyopt package")])
def test_the_training_screen_refuses_an_unavailable_optimizer_on_start(tmp_path, monkeypatch, train, words):
    import asyncio

    from tests.test_tui_training_screen import training_app
    from tests.tui_support import wait_idle

    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    app = training_app(tmp_path, name="zxq-cat", train=train)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "training"
            message = str(app.screen.query_one("#message").content)
            assert words in message and "choose adamw" in message, message
    asyncio.run(drive())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
