import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
# One thread for the whole suite and for every subprocess it starts: on 2 shared cores, OpenMP threads asking for more
# cores than are free spin and make every test crawl.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest_plugins = ("tests.tui_fixtures",)  # the wizard tests' shell fixtures (console, wizard_home)


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.cuda` tests need a CUDA GPU (bench/gpu_check.py runs them there); elsewhere they are skipped."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU with a CUDA build of torch (torch.cuda.is_available() is "
                                       "False here); bench/gpu_check.py runs these on a GPU")
        for item in cuda_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random-weight SD1-shaped diffusers folder (the `tiwiz demo-model --random` output). Read-only: copy it
    before modifying."""
    from core.models.builtin import write_random_demo_model

    return write_random_demo_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """The tiny random-weight SDXL-shaped diffusers folder (`tiwiz demo-model --family sdxl` output). Read-only."""
    from core.models.builtin import write_tiny_sdxl_model
    from core.models.loader import quiet_libraries

    quiet_libraries()
    return write_tiny_sdxl_model(tmp_path_factory.mktemp("tiny-sdxl") / "sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    """A tiny random-weight BLIP captioner + processor saved with `save_pretrained` (load it like a real one).
    Read-only."""
    from tests.tiny_blip import write_tiny_blip

    return write_tiny_blip(tmp_path_factory.mktemp("tiny-blip") / "blip", seed=0)


def _kill_workers_under(folder: Path) -> None:
    """Kill detached `core.runs.worker` processes whose run folder lies under `folder` (a failed test must not leave
    a training worker running after the suite)."""
    import signal

    prefix = str(folder)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "core.runs.worker" in args and any(a.startswith(prefix) for a in args):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(autouse=True)
def _no_stray_workers(request):
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is not None:
        _kill_workers_under(tmp)
