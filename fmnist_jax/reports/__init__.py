"""What a run shows people: the model table, the progress bar, TensorBoard files and figures.

Nothing here computes results; training and inference hand their numbers and images to it.
"""

import sys

# The figure files `plots.save` writes, by extension: matplotlib's raster and vector formats that
# need nothing beyond it.
FIGURE_FORMATS = ("png", "pdf", "svg")


def in_notebook() -> bool:
    """Whether this process is a Jupyter/Colab kernel: figures show inline, the progress bar draws."""
    return "ipykernel" in sys.modules
