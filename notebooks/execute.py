"""Runs a notebook top to bottom on a fresh kernel and writes it back with its outputs.

    python -m notebooks.execute [notebooks/classify_clothing.ipynb]

The committed outputs come from the full settings (no flag). CI executes the notebook with
`QUICK = True` (tests/test_notebook.py), injected papermill-style: a cell after the one tagged
`parameters` sets the new values, so the notebook itself stays what users run.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "classify_clothing.ipynb")


def with_parameters(notebook: nbformat.NotebookNode, parameters: dict[str, Any]) -> None:
    """Inserts a cell setting `parameters` right after the cell tagged `parameters`."""
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def _settled(text: str) -> str:
    """What a terminal shows of `text`: each line as its last carriage return left it."""
    return "\n".join(line.rpartition("\r")[2] for line in text.split("\n"))


def tidy(notebook: nbformat.NotebookNode) -> None:
    """Outputs as a reader sees them: consecutive stream chunks merged, progress bars settled, no
    ANSI colors, no execution timestamps."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        merged = []
        for output in cell.outputs:
            if output.output_type == "stream":
                if merged and merged[-1].output_type == "stream" and merged[-1].name == output.name:
                    merged[-1].text += output.text
                    continue
            merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", _settled(output.text))
        cell.outputs = merged


def execute(
    path: str = NOTEBOOK, parameters: dict[str, Any] | None = None, timeout: int = 1800
) -> nbformat.NotebookNode:
    """The notebook at `path` run on a fresh kernel from its own directory; raises on a cell error."""
    notebook = nbformat.read(path, as_version=4)
    if parameters:
        with_parameters(notebook, parameters)
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
    ).execute()
    tidy(notebook)
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", default=NOTEBOOK)
    args = parser.parse_args()
    notebook = execute(args.notebook)
    nbformat.write(notebook, args.notebook)
    print(f"Executed {args.notebook} and wrote its outputs into it.")


if __name__ == "__main__":
    main()
