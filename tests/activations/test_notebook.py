"""``shared-notebooks/02-activation-datasets.ipynb`` runs from top to bottom on the tiny build,
in a real Jupyter kernel, and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analoglab.activations import list_stores, load_artifact
from analoglab.config import Settings
from analoglab.models.catalog import Catalog

NOTEBOOK = Path(__file__).parents[2] / "shared-notebooks" / "02-activation-datasets.ipynb"


def test_the_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_the_notebook_runs(
    use_tiny_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment: the tiny build's models, a scratch folder.
    monkeypatch.setenv("ACTIVATIONS_DIR", str(tmp_path / "acts"))
    monkeypatch.setenv("N_PROMPTS", "48")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "held-out accuracy" in text and "CKA(" in text
    stores = {s["name"]: s for s in list_stores(tmp_path / "acts")}
    first = Catalog.load(use_tiny_home).analogs[0].name  # the notebook's default analog
    assert f"{first}-sentiment-all" in stores
    assert all(s["state"] == "complete" for s in stores.values()) and len(stores) == 3
    artifacts = tmp_path / "acts" / "artifacts"
    arrays, record = load_artifact(artifacts / f"{first}-sentiment-direction")
    assert arrays["vector"].ndim == 1 and record["dataset"]["positions"] == "last"
