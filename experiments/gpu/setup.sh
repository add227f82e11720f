# Sourced first by every command on the GPU machine (`source .gpu/setup.sh`, carry [".gpu"]):
# installs the carried wheels and the package, writes the prepared data to /tmp/tfds.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 TFDS_DATA_DIR=/tmp/tfds
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .gpu/whl/*.whl
python3 -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e .
mkdir -p /tmp/tfds/fashion_mnist/3.0.1
cp .gpu/data/dataset_info.json /tmp/tfds/fashion_mnist/3.0.1/
python3 -c "import numpy as np; np.savez('/tmp/tfds/fashion_mnist/3.0.1/fmnist_jax_arrays.npz', **np.load('.gpu/data/arrays.npz'))"
