"""The notebook: it runs top to bottom on a fresh kernel, and its committed outputs show a full run."""

import json
import re

import nbformat
import pytest

from notebooks import execute

# Paths of a machine that must not leak into the committed notebook.
_MACHINE_PATHS = re.compile(r"(/root|/home/\w+|/tmp|/work|/Users/\w+|/private/var)/")


def _outputs(notebook: nbformat.NotebookNode) -> list[tuple[int, dict]]:
    return [
        (i, output)
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
    ]


def _text(output: dict) -> str:
    return output.get("text", "") + "".join(
        v for k, v in output.get("data", {}).items() if k.startswith("text/")
    )


def test_notebook_runs_top_to_bottom_with_the_quick_parameters(
    prepared_tfds_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TFDS_DATA_DIR", prepared_tfds_dir)  # the kernel inherits it
    notebook = execute.execute(parameters={"QUICK": True, "WORKDIR": str(tmp_path / "runs")})
    outputs = _outputs(notebook)
    assert not [o for _, o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for _, o in outputs) >= 8
    last = _text(outputs[-1][1])
    assert "QUICK = True" in last and "backend cpu" in last and "sweep" in last
    assert (tmp_path / "runs" / "sweep" / "sweep.json").is_file()
    text = "".join(_text(o) for _, o in outputs)
    assert "identical" in text  # restored = trained model
    assert "after 3 epochs" in text and "after 8 epochs" in text  # trained on by 5 more
    assert (tmp_path / "runs" / "mlp" / "summary_3_epochs.json").is_file()
    # The MLP's progress: one bar settled at its last state, not a line per update or epoch.
    bars = [o.text for _, o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert bars[0].startswith("epoch 3/3: 100%") and bars[0].count("\n") == 1
    assert "val_acc=" in bars[0]


def test_committed_notebook_shows_a_full_run_and_no_machine_paths():
    notebook = nbformat.read(execute.NOTEBOOK, as_version=4)
    outputs = _outputs(notebook)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "QUICK = False" in parameters[0].source
    assert all(c.outputs for c in notebook.cells if c.cell_type == "code" and c not in parameters)
    assert not [o for _, o in outputs if o.output_type == "error"]
    figures = [i for i, o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 8  # images, curves, confusion, mistakes, bars x2, CNN curves, sweep
    text = "".join(_text(o) for _, o in outputs)
    assert "QUICK = False" in text and "backend " in text
    assert re.search(r"mlp: test accuracy 0\.8[7-9]\d\d after 10 epochs", text)
    assert re.search(r"mlp: test accuracy 0\.8[7-9]\d\d after 15 epochs", text)  # trained on
    assert "\r" not in text  # progress bars settled
    leaks = _MACHINE_PATHS.findall(json.dumps(notebook))
    assert not leaks, f"the committed notebook names paths of the machine that ran it: {leaks}"


@pytest.mark.parametrize("text, settled", [("a\rb\rc\nd", "c\nd"), ("x\n", "x\n")])
def test_progress_bars_settle_as_a_terminal_shows_them(text, settled):
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", text=text)])]
    )
    execute.tidy(notebook)
    assert notebook.cells[0].outputs[0].text == settled
