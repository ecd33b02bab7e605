#!/usr/bin/env bash
# One command on a fresh machine: set up (or reuse) .venv with the right torch, then run.
#
#   ./tiwiz.sh demo [ARGS]     train the demo embedding (tiwiz demo)
#   ./tiwiz.sh test [ARGS]     run the test suite (python -m pytest -q; .ci/run calls this)
#   ./tiwiz.sh [ARGS]          anything else goes to `tiwiz` (no arguments: the wizard)
#   ./tiwiz.sh --print-plan [demo|test]   say what would be done, do nothing
#
# torch: an existing torch is kept (the venv's own, or on a pod the system's CUDA torch, which the venv then sees
# through --system-site-packages); otherwise the CPU build on a machine without an NVIDIA GPU (from PyTorch's CPU
# wheel index, or from a local wheel mirror pip is configured for), or the default CUDA build where there is a GPU.
# Override with TIWIZ_TORCH_INDEX=URL (where torch comes from) and PYTHON=python3.X (which interpreter makes the venv).
# Running it again reuses everything: the project is reinstalled only when pyproject.toml changed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TIWIZ_VENV:-$HERE/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TIWIZ_TORCH_SPEC:-torch==2.13.0}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

plan_only=0
if [[ "${1:-}" == "--print-plan" || "${1:-}" == "--dry-run" ]]; then
    plan_only=1
    shift
fi
mode="${1:-wizard}"
case "$mode" in
    test) extras="[test]"; shift ;;
    demo) extras=""; shift ;;
    *) extras=""; mode="tiwiz" ;;
esac

say() { echo "tiwiz.sh: $*" >&2; }

# "VERSION CUDA" of the torch that $1 would import ("none" if it has none; CUDA is "cpu" for a CPU build), read from
# torch/version.py without importing torch: importing it took 5 s of every launch (7 s to the first screen).
torch_of() {
    "$1" - <<'EOF' 2>/dev/null || echo "none"
import importlib.util, os, re
spec = importlib.util.find_spec("torch")
text = open(os.path.join(spec.submodule_search_locations[0], "version.py"), encoding="utf-8").read()
version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.M).group(1)
cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)", text, re.M)
print(version, cuda.group(1) if cuda else "cpu")
EOF
}

has_gpu() {
    if [[ -n "${TIWIZ_ASSUME_GPU:-}" ]]; then [[ "$TIWIZ_ASSUME_GPU" == 1 ]]; return; fi
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

# pip is set up with a local wheel mirror (find-links or a file:// index): offline machines, CI images.
local_mirror() {
    [[ -n "${PIP_FIND_LINKS:-}" ]] && return 0
    "$PY" -m pip config list 2>/dev/null | grep -Eq "(find-links|index-url)='(file:|/)"
}

steps=()
venv_python="$VENV/bin/python"
system_site=""
if [[ -x "$venv_python" ]]; then
    steps+=("venv: reuse $VENV")
    torch_now="$(torch_of "$venv_python")"
else
    command -v "$PY" >/dev/null 2>&1 || { say "no $PY found; install Python 3.10+ or set PYTHON=..."; exit 1; }
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "$PY is older than 3.10"; exit 1; }
    torch_now="$(torch_of "$PY")"
    if [[ "$torch_now" != "none" && "${torch_now#* }" != "cpu" ]]; then
        system_site="--system-site-packages"
        steps+=("venv: create $VENV with --system-site-packages (keeps this machine's CUDA torch ${torch_now% *})")
    else
        steps+=("venv: create $VENV")
        torch_now="none"
    fi
fi

torch_args=()
if [[ "$torch_now" != "none" ]]; then
    build="CUDA ${torch_now#* }"; [[ "${torch_now#* }" == "cpu" ]] && build="CPU"
    steps+=("torch: keep the installed torch ${torch_now% *} ($build build)")
elif [[ -n "${TIWIZ_TORCH_INDEX:-}" ]]; then
    torch_args=("$TORCH_SPEC" --index-url "$TIWIZ_TORCH_INDEX")
    steps+=("torch: install $TORCH_SPEC from $TIWIZ_TORCH_INDEX (TIWIZ_TORCH_INDEX)")
elif has_gpu; then
    torch_args=("$TORCH_SPEC")
    steps+=("torch: install $TORCH_SPEC, the CUDA build (an NVIDIA GPU is present)")
elif local_mirror; then
    torch_args=("$TORCH_SPEC")
    steps+=("torch: install $TORCH_SPEC, the CPU build, from the local wheel mirror pip is configured for (no NVIDIA GPU)")
else
    torch_args=("$TORCH_SPEC" --index-url "$CPU_INDEX")
    steps+=("torch: install $TORCH_SPEC, the CPU build, from $CPU_INDEX (no NVIDIA GPU; PyPI's default is CUDA)")
fi

stamp="$VENV/.tiwiz-installed"
want="$( (cat "$HERE/pyproject.toml"; echo "extras=$extras") | cksum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
# The test extra includes the plain install, so a venv set up for tests is good for the demo too.
if [[ "$have" == "$want" || ( -z "$extras" && -f "$stamp.test" && "$(cat "$stamp.test")" == "$(
        (cat "$HERE/pyproject.toml"; echo "extras=[test]") | cksum | cut -d' ' -f1)" ) ]]; then
    steps+=("project: already installed (pyproject.toml unchanged)")
    install_project=0
else
    steps+=("project: pip install -e .$extras")
    install_project=1
fi

case "$mode" in
    test) steps+=("run: python -m pytest -q $*") ;;
    demo) steps+=("run: tiwiz demo $*") ;;
    *) steps+=("run: tiwiz $*") ;;
esac

for step in "${steps[@]}"; do say "$step"; done
[[ "$plan_only" == 1 ]] && exit 0

if [[ ! -x "$venv_python" ]]; then
    "$PY" -m venv $system_site "$VENV"
fi
if [[ ${#torch_args[@]} -gt 0 ]]; then
    "$venv_python" -m pip install -q "${torch_args[@]}"
fi
if [[ "$install_project" == 1 ]]; then
    "$venv_python" -m pip install -q -e "$HERE$extras"
    echo "$want" > "$stamp"
    [[ "$extras" == "[test]" ]] && echo "$want" > "$stamp.test"
fi

cd "$HERE"
case "$mode" in
    test) exec "$venv_python" -m pytest -q "$@" ;;
    demo) exec "$VENV/bin/tiwiz" demo "$@" ;;
    *) exec "$VENV/bin/tiwiz" "$@" ;;
esac
