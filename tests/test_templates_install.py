"""A non-editable install (wheel) ships the built-in templates to sys.prefix/share/tiwiz/templates and finds them."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_templates_and_installed_copy_finds_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("core", "tui", "templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    run = dict(capture_output=True, text=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(wheels)], cwd=src, **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("tiwiz-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if "/data/share/tiwiz/templates/" in n)
    assert shipped == sorted(p.name for p in (ROOT / "templates").glob("*.txt"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = ("from core.training.templates import templates_dir, list_templates, load_template; "
            "print(templates_dir()); print(list_templates()); print(len(load_template('subject').lines))")
    proc = subprocess.run([str(python), "-c", code], cwd=tmp_path, **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder, listed, count = proc.stdout.strip().splitlines()
    assert Path(folder) == venv / "share" / "tiwiz" / "templates"
    assert listed == str(sorted(p.stem for p in (ROOT / "templates").glob("*.txt")))
    assert int(count) == len(load_subject_lines())


def load_subject_lines():
    from core.training.templates import load_template

    return load_template("subject").lines
