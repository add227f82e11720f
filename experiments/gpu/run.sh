#!/usr/bin/env bash
# WORKSPACE.md's "For the next GPU session" list as three device calls of under 10 minutes each, so
# a session that is lent a GPU spends its 30 minutes measuring, not typing. On the device, with
# carry [".gpu"] (from `bash experiments/gpu/pack.sh` here):
#     source .gpu/setup.sh; bash experiments/gpu/run.sh suite     # ~5 min: cuda suite, notebook
#     source .gpu/setup.sh; bash experiments/gpu/run.sh timings   # ~6 min: loops, start-up, compile, eval
#     source .gpu/setup.sh; bash experiments/gpu/run.sh configs   # ~8 min: fast and ResNet in bfloat16
# Each command's output, its wall time and exit status go to $OUT/STAGE.log as it runs, so a call
# cut at its limit still brings back what finished; the device and versions to $OUT/versions.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:-}
case $stage in suite | timings | configs) ;; *) echo "usage: run.sh suite|timings|configs" >&2; exit 2 ;; esac
out=${OUT:?run on the device machine, which sets OUT}
log="$out/$stage.log"
: "${TFDS_DATA_DIR:?source .gpu/setup.sh first}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import sys, jax, jaxlib, flax, optax, orbax.checkpoint as o, numpy
print(sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "orbax", o.__version__, "numpy", numpy.__version__, jax.devices())'
  nproc
} > "$out/versions.txt" 2>&1

# Runs one measurement with a time limit (seconds, then the command), logging its output and wall time.
measure() {
  local limit=$1; shift
  echo "### $*" >> "$log"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "### exit $? after $((SECONDS - start)) s" >> "$log"
}

case $stage in
  suite)
    measure 400 env JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false \
      FMNIST_JAX_PREPARED_TFDS_DIR="$TFDS_DATA_DIR" \
      python3 -m pytest -q -n 8 -m "not prepares" --durations=15 -p no:cacheprovider
    measure 150 python3 -m notebooks.execute
    ;;
  timings)
    # Session 12's 3.6-5.4 s around 10 epochs of 0.05 s: the log's timestamps and any compile
    # between the epoch lines say where it goes.
    measure 60 env JAX_LOG_COMPILES=1 python3 -m fmnist_jax.main --workdir=/tmp/w/mlp_log \
      --config=configs/mlp.py
    measure 150 python3 -m experiments.step_loops --scan_unrolls=1,4,8,16
    measure 120 python3 -m experiments.startup --repeats=2
    measure 60 python3 -m experiments.compile_time
    measure 60 python3 -m experiments.compile_time --config=configs/cnn.py
    measure 45 python3 -m experiments.eval_time
    measure 45 python3 -m experiments.eval_time --config=configs/mlp.py
    ;;
  configs)
    # float32's rows are session 12's (fast 0.9437 in 7.73 s, ResNet 291 s of training).
    measure 90 python3 -m fmnist_jax.main --workdir=/tmp/w/fast_bfloat16 \
      --config=configs/fast.py --config.dtype=bfloat16
    cat /tmp/w/fast_bfloat16/summary.json >> "$log" 2>&1
    measure 450 python3 -m fmnist_jax.main --workdir=/tmp/w/resnet_bfloat16 \
      --config=configs/resnet.py --config.num_seeds=3 --config.dtype=bfloat16
    cat /tmp/w/resnet_bfloat16/summary.json >> "$log" 2>&1
    ;;
esac

