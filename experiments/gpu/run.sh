#!/usr/bin/env bash
# Issue 15's GPU measurements as two device calls that fit a lease of 15 minutes of device time (a
# start takes minutes of it; a machine does not start with under 4 minutes left, so the second call
# must follow the first while the machine is warm). On the device, with carry [".gpu"] (from
# `bash experiments/gpu/pack.sh` here):
#     source .gpu/setup.sh; bash experiments/gpu/run.sh main      # ~6 min: cuda suite, config rows, notebook
#     source .gpu/setup.sh; bash experiments/gpu/run.sh resnet    # ~5-6 min: 3-seed ResNet in bfloat16
#     source .gpu/setup.sh; bash experiments/gpu/run.sh timings   # ~6 min: loops, start-up, compile, eval
#     source .gpu/setup.sh; bash experiments/gpu/run.sh search    # ~5 min: issue 46's GPU comparison
# `timings` only with a lease that has the time left. Each command's output, its wall time and
# exit status go to $OUT/STAGE.log as it runs, so a call cut at its limit still brings back what
# finished; each config row's summary.json follows its command there; the device and versions go
# to $OUT/versions.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:-}
case $stage in main | resnet | timings | search) ;; *) echo "usage: run.sh main|resnet|timings|search" >&2; exit 2 ;; esac
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
# Past the limit a run gets SIGTERM (it stops at the end of its current call and saves), and SIGKILL
# 15 s later: on a CPU rehearsal a stopped ResNet still compiled for 5 minutes.
measure() {
  local limit=$1; shift
  echo "### $*" >> "$log"
  local start=$SECONDS
  timeout -k 15 "$limit" "$@" >> "$log" 2>&1
  echo "### exit $? after $((SECONDS - start)) s" >> "$log"
}

# One README row: a time limit, a name (the workdir under /tmp/w), the config and its overrides;
# the run's summary.json follows its output.
row() {
  local limit=$1 name=$2; shift 2
  measure "$limit" python3 -m fmnist_jax.main --workdir="/tmp/w/$name" "$@"
  cat "/tmp/w/$name/summary.json" >> "$log" 2>&1
  echo >> "$log"
}

case $stage in
  main)
    # The suite without the tests that prepare the data (the image has no TensorFlow): 134 s with
    # -n 8 on the H100 in session 12.
    measure 220 env JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false \
      FMNIST_JAX_PREPARED_TFDS_DIR="$TFDS_DATA_DIR" \
      python3 -m pytest -q -n 8 -m "not prepares" --durations=15 -p no:cacheprovider
    # Session 12's H100 rows took 13-38 s a command. The first MLP run logs its compiles (the
    # timestamps between its lines say where its 3.6-5.4 s around 10 epochs of 0.05 s goes); the
    # second finds its programs in the compilation cache.
    JAX_LOG_COMPILES=1 row 45 mlp --config=configs/mlp.py
    row 45 mlp_cached --config=configs/mlp.py
    row 45 cnn --config=configs/cnn.py
    row 45 cnn_bfloat16 --config=configs/cnn.py --config.dtype=bfloat16
    row 75 fast --config=configs/fast.py
    row 75 fast_bfloat16 --config=configs/fast.py --config.dtype=bfloat16
    measure 240 python3 -m notebooks.execute  # with the search section
    # The search issue's GPU target: the tutorial's whole search job (154 s on the 2-core CPU).
    measure 120 python3 -m experiments.search --config=configs/search_mlp.py --workdir=/tmp/w/search
    ;;
  resnet)
    # float32 on the H100: 0.9547 +- 0.0002 in 290.8 s of training, 352 s whole (session 12).
    row 420 resnet_bfloat16 --config=configs/resnet.py --config.num_seeds=3 --config.dtype=bfloat16
    ;;
  search)
    # The tutorial's search in one program against the same search as single runs one after
    # another (Optuna's TPE and Hyperband pruner; target 30x), with 3 slots and with 17 (every
    # trial of a Hyperband iteration at once).
    for slots in 3 17; do
      measure 240 python3 -m experiments.benchmark.optuna_loop --config=configs/search_mlp.py \
        --workdir="/tmp/w/optuna_$slots" --config.search.population="$slots" --config.plots=False
    done
    ;;
  timings)
    measure 150 python3 -m experiments.step_loops --scan_unrolls=1,4,8,16
    measure 120 python3 -m experiments.startup --repeats=2
    measure 60 python3 -m experiments.compile_time
    measure 60 python3 -m experiments.compile_time --config=configs/cnn.py
    measure 45 python3 -m experiments.eval_time
    measure 45 python3 -m experiments.eval_time --config=configs/mlp.py
    ;;
esac
