"""Embeddings for TensorBoard's Embedding Projector, and their principal components.

`write` lays out what the projector plugin reads from a log directory: `projector_config.pbtxt`
naming the vectors (`embeddings.tsv`), a label per row (`metadata.tsv`) and a sprite, all the images
tiled in one PNG (`sprite.png`) so each point shows its image. `tensorboard --logdir` on the
parent directory, tab "Projector", then shows them in PCA, t-SNE or UMAP, interactively.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from fmnist_jax.errors import UserError, writing

CONFIG_FILE = "projector_config.pbtxt"
_CONFIG = """embeddings {{
  tensor_name: "penultimate features"
  tensor_path: "embeddings.tsv"
  metadata_path: "metadata.tsv"
  sprite {{
    image_path: "sprite.png"
    single_image_dim: {height}
    single_image_dim: {width}
  }}
}}
"""


def pca(features: np.ndarray, components: int = 2) -> np.ndarray:
    """The features projected on their first principal components, `[N, components]`."""
    centered = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:components].T


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE map of the features, `[N, 2]`, by scikit-learn (the `explain` extra)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise UserError(
            "--map=tsne uses scikit-learn's t-SNE, which is not installed: pip install "
            "'scikit-learn>=1.3' (the package's `explain` extra), or keep --map=pca."
        ) from e
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def write(
    directory: str,
    features: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    class_names: tuple[str, ...],
) -> str:
    """The projector's files for `features` `[N, D]` with their `labels` and uint8 `images`
    `[N, H, W, 1]` in `directory` (created); returns it."""
    with writing(os.path.join(directory, CONFIG_FILE)):
        os.makedirs(directory, exist_ok=True)
        np.savetxt(os.path.join(directory, "embeddings.tsv"), features, delimiter="\t", fmt="%.5g")
        with open(os.path.join(directory, "metadata.tsv"), "w") as f:
            f.write("".join(f"{class_names[k]}\n" for k in labels))
        height, width = images.shape[1:3]
        side = math.ceil(math.sqrt(len(images)))
        sprite = np.zeros((side * height, side * width), np.uint8)
        for i, image in enumerate(images):
            r, c = divmod(i, side)
            sprite[r * height : (r + 1) * height, c * width : (c + 1) * width] = image[..., 0]
        Image.fromarray(sprite).save(os.path.join(directory, "sprite.png"))
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            f.write(_CONFIG.format(height=height, width=width))
    return directory
