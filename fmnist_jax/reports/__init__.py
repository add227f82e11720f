"""What a run shows people: the model table, the progress bar, TensorBoard files and figures.

Nothing here computes results; training and inference hand their numbers and images to it.
"""

import sys
from typing import Any

# The figure files `plots.save` writes, by extension: matplotlib's raster and vector formats that
# need nothing beyond it.
FIGURE_FORMATS = ("png", "pdf", "svg")


def shown(value: Any) -> float | str:
    """A searched value as tables, figures and TensorBoard show it: a number, or widths "32x64"."""
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return value


def in_notebook() -> bool:
    """Whether this process is a Jupyter/Colab kernel: figures show inline, the progress bar draws."""
    return "ipykernel" in sys.modules
