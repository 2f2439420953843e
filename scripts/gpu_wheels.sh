#!/usr/bin/env bash
# Wheels of every kseg dependency that the bare GPU machines lack, for Python 3.12 on manylinux x86-64,
# into .whl/ (git-ignored), at the versions this environment runs (the ones the test suite passed with).
#
# The GPU machines run Python 3.12 with torch 2.11, torchvision, timm, opencv, pandas, typer, rich and
# matplotlib (and what those need: numpy, pillow, PyYAML, huggingface-hub, safetensors, ...). Everything
# else kseg imports travels as a wheel, 64 MiB at most in all. tests/test_gpu_check.py checks this list
# against kseg's own requirements, read from the installed package metadata.
#
# Usage:   scripts/gpu_wheels.sh [PYTHON]        (default .venv/bin/python: whose versions to pin)
# There:   python -m pip install --no-index --no-deps .whl/*.whl && python scripts/gpu_check.py OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))

# kseg's own requirements and, recursively, theirs, minus what the GPU machine has
PACKAGES=(
  segmentation-models-pytorch
  albumentations albucore simsimd stringzilla
  pydantic pydantic-core annotated-types typing-inspection
  iterative-stratification scikit-learn scipy joblib threadpoolctl narwhals cloudpickle
  imagehash pywavelets
  typing-extensions  # pydantic needs a newer one than torch may bring
  ttach
)

rm -rf .whl.part && mkdir -p .whl.part
for package in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest .whl.part \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any "$package==$version" 2>&1 | grep -v '^WARNING: Location' || true
  ls .whl.part | grep -qi "^$(echo "$package" | tr '-' '_')-$version" || {
    echo "error: no Python 3.12 manylinux x86-64 wheel of $package $version could be downloaded" >&2
    exit 1
  }
done
total=$(du -cb .whl.part/*.whl | tail -1 | cut -f1)
ls -l .whl.part/*.whl | awk '{printf "%9.1f MiB  %s\n", $5 / 1048576, $9}' | sed 's#.whl.part/##'
awk -v t="$total" -v n="${#PACKAGES[@]}" 'BEGIN { printf "%9.1f MiB  in all (%d wheels; at most 64 MiB may travel)\n", t / 1048576, n }'
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: the wheels take $total bytes, over the 64 MiB that may travel with the working tree" >&2
  exit 1
fi
rm -rf .whl && mv .whl.part .whl
echo "wrote .whl/: carry it to the GPU machine with the working tree"
