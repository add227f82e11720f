"""The reference notebooks' baseline MLP (TensorFlow tutorial "Classify images of clothing").

Flatten -> Dense(128, relu) -> Dense(10): 101,770 parameters; Adam 1e-3, batch 32, 10 epochs,
5,000 validation examples carved from train.

    python -m fmnist_jax.main --config=configs/mlp.py --workdir=/tmp/fmnist/mlp

Measured on the 2-core AMD EPYC dev/CI machine (CPU backend, WORKSPACE.md): test accuracy 0.8811
(seeds 0-4: 0.872-0.8841, mean 0.8780 ± 0.0041), 2.5-6.7 s of training (0.22-0.6 s per epoch: the
same VM type on different days) + 0.8-1.9 s compile (0.6 s cached); 29 s for README command 1 end to
end on a clean clone, data preparation included. On one H100 GPU (jax 0.11.2, CUDA 13; WORKSPACE.md
2026-11-24): 0.8800, 0.51 s of training (0.05 s per epoch, 1.07M examples/s; target 0.5 s) + 3.6 s
compile (0.7 s cached), 13-16 s for the whole command.
"""

from fmnist_jax.config import default


def get_config():
    return default()
