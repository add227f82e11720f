"""Seconds to explain 10 images and to embed the 10,000 test images with a trained model.

    python -m experiments.explain_time --workdir=runs/mlp [--steps=64]

Times, on this backend, each `Classifier` call twice: the first compiles its program (a new
process pays it), the second is the call alone. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax

from fmnist_jax import data, inference


def _twice(fn) -> tuple[float, float]:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    classifier = inference.load(args.workdir)
    splits = data.load(classifier.config.data)
    ten = splits.test_images[:10]
    calls = {
        "activations of 10 images": lambda: classifier.activations(ten),
        f"integrated gradients of 10 images ({args.steps} steps)": lambda: classifier.attributions(
            ten, steps=args.steps
        ),
        "embed the 10,000 test images": lambda: classifier.embed(splits.test_images),
    }
    if classifier.conv_map_name is not None:  # a model with convolutions
        calls["Grad-CAM of 10 images"] = lambda: classifier.attributions(ten, method="grad_cam")
    device = jax.devices()[0]
    print(
        f"{classifier.config.model.name}, {jax.default_backend()} ({device.device_kind}), jax {jax.__version__}\n"
    )
    print("| call | first (compiles), s | again, s |\n| --- | --- | --- |")
    for name, fn in calls.items():
        first, again = _twice(fn)
        print(f"| {name} | {first:.2f} | {again:.2f} |")


if __name__ == "__main__":
    main()
