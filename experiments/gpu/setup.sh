# Sourced first by every command on the GPU machine (`source .gpu/setup.sh`, carry [".gpu"]):
# installs the carried wheels and the package, writes the prepared data to /tmp/tfds.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 TFDS_DATA_DIR=/tmp/tfds
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .gpu/whl/*.whl
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e .
python3 - <<'PY'
import os, shutil
import numpy as np
from fmnist_jax import config, data
prepared = data.prepared_dir(config.default().data)  # under $TFDS_DATA_DIR
os.makedirs(prepared, exist_ok=True)
shutil.copy(os.path.join(".gpu/data", data.DATASET_INFO_FILE), prepared)
np.savez(os.path.join(prepared, data.ARRAYS_FILE), **np.load(".gpu/data/arrays.npz"))
PY
