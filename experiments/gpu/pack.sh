#!/usr/bin/env bash
# Packs what the GPU machine lacks into .gpu/ (in .gitignore; carry it), with .venv (bash .ci/setup): wheels of the packages its
# image does not hold, and the prepared arrays (compressed to fit the 64 MiB carry). Run here, in
# the repository root, with the data prepared (python -m fmnist_jax.prepare). See WORKSPACE.md,
# 2026-11-24, for what the image holds and what a session measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu/whl .gpu/data
platforms="--only-binary=:all: --python-version 3.12 --implementation cp"
for n in 17 24 27 28 31 34; do platforms+=" --platform manylinux_2_${n}_x86_64"; done
platforms+=" --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
.venv/bin/python -m pip download -q --no-deps $platforms -d .gpu/whl ml_collections tensorboardX
# The notebook's kernel; without the packages the image already has (two versions break it).
.venv/bin/python -m pip download -q $platforms -d .gpu/nb nbclient nbformat ipykernel
rm -f .gpu/nb/{attrs,packaging,psutil,pygments,python_dateutil,typing_extensions}-*.whl
mv .gpu/nb/*.whl .gpu/whl/ && rmdir .gpu/nb
# Optuna (search.algorithm="tpe", experiments/benchmark/optuna_loop.py), with the dependencies the image lacks.
.venv/bin/python -m pip download -q $platforms -d .gpu/optuna optuna
rm -f .gpu/optuna/{numpy,packaging,tqdm,typing_extensions}-*.whl
mv .gpu/optuna/*.whl .gpu/whl/ && rmdir .gpu/optuna
.venv/bin/python - <<'PY'
import os, shutil
import numpy as np
from fmnist_jax import config, data
prepared = data.prepared_dir(config.default().data)  # where every run reads it
shutil.copy(os.path.join(prepared, data.DATASET_INFO_FILE), ".gpu/data/")
np.savez_compressed(".gpu/data/arrays.npz", **np.load(os.path.join(prepared, data.ARRAYS_FILE)))
PY
cp experiments/gpu/setup.sh .gpu/
du -sh .gpu
