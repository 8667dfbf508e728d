"""The shared notebooks (``shared-notebooks/``): every one is stored clean, and 01, 04 and 05
run from top to bottom in a real Jupyter kernel on the tiny build.

The kernel inherits the test's environment, as a notebook on the platform inherits the
single-user server's: ``ANALOGLAB_HOME`` names the data folder, ``ANALOG`` / ``FRONTIER``
pick the tiny build's models instead of the demo ones. 02 runs in
``tests/activations/test_notebook.py``, 03 against the real services in
``tests/lab/test_end_to_end.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from analoglab.config import Settings

FOLDER = Path(__file__).parents[2] / "shared-notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Run ``shared-notebooks/<name>`` in a fresh python3 kernel; the executed notebook."""
    for key, value in {"OMP_NUM_THREADS": "1", **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(FOLDER / name, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def text_of(nb: Any) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def images_of(nb: Any) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        for out in cell.get("outputs", [])
    )


def test_there_are_five_shared_notebooks() -> None:
    assert [p.name.split("-")[0] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and nb.cells[0].cell_type == "markdown"  # each opens by saying what it does
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert "execution" not in cell.metadata  # nbclient's timings
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata  # no saved widget state either


@pytest.mark.slow
def test_the_quickstart_runs(
    use_tiny_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = execute("01-quickstart.ipynb", tmp_path, monkeypatch, ANALOG="tiny-analog-s")
    text = text_of(nb)
    assert "frontier   tiny-frontier" in text and "lab        tiny-lab" in text
    assert "% of the frontier's" in text and "top-1 agreement" in text
    assert "overall it was →" in text  # generated
    assert "64 reviews × 2 hook points" in text
    assert "PC 1 separates the two sentiments" in text
    assert images_of(nb) == 1
