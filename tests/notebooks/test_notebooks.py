"""The shared notebooks (``shared-notebooks/``): every one is stored clean, and 01, 04 and 05
run from top to bottom in a real Jupyter kernel on the tiny build.

The kernel inherits the test's environment, as a notebook on the platform inherits the
single-user server's: a data folder of its own (``ANALOGLAB_HOME``) with the tiny build's
model store, catalog and lab sites, only read; ``ANALOG`` / ``FRONTIER`` pick the tiny build's
models instead of the demo ones. 02 runs in
``tests/activations/test_notebook.py``, 03 against the real services in
``tests/lab/test_end_to_end.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from analoglab.config import Settings

FOLDER = Path(__file__).parents[2] / "shared-notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


@pytest.fixture
def reader(tiny_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A researcher's data folder in tmp whose models are the tiny build's (never written)."""
    for name, folder in {
        "HOME": tmp_path / "home",
        "MODEL_STORE": tiny_home.models_path,
        "CATALOG_DIR": tiny_home.catalog_path,
        "LAB_SITES_DIR": tiny_home.lab_sites_path,
    }.items():
        monkeypatch.setenv(f"ANALOGLAB_{name}", str(folder))
    return Settings()


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Run ``shared-notebooks/<name>`` in a fresh python3 kernel; the executed notebook."""
    for key, value in {"OMP_NUM_THREADS": "1", **env}.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "work"  # the kernel's working folder
    work.mkdir(exist_ok=True)
    nb = nbformat.read(FOLDER / name, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(work)}}
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
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = execute("01-quickstart.ipynb", tmp_path, monkeypatch, ANALOG="tiny-analog-s")
    text = text_of(nb)
    assert "frontier   tiny-frontier" in text and "lab        tiny-lab" in text
    assert "% of the frontier's" in text and "top-1 agreement" in text
    assert "overall it was →" in text  # generated
    assert "64 reviews × 2 hook points" in text
    assert "PC 1 separates the two sentiments" in text
    assert images_of(nb) == 1


@pytest.mark.slow
def test_steering_and_probes_run_and_land_in_mlflow(
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    # MLflow's own variable, as the platform may set it for single-user servers.
    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    nb = execute(
        "04-steering-and-probes.ipynb", tmp_path, monkeypatch,
        ANALOG="tiny-analog-s", MLFLOW_TRACKING_URI=uri,
    )
    text = text_of(nb)
    assert f"MLflow: {uri}" in text
    assert "sentiment vector at blocks." in text and "scale +4: P(' good')" in text
    p_good = {  # P(' good') at each steering scale, as printed
        int(line.split(":")[0].split()[1]): float(line.split("P(' good')")[1].split()[0])
        for line in text.splitlines()
        if line.startswith("scale ") and "P(' good')" in line
    }
    assert p_good[4] > p_good[0] > p_good[-4]  # the direction steers
    assert "the probe beats its control by" in text
    assert images_of(nb) == 2
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`analoglab.model` = 'tiny-analog-s'",
    )
    by_name = {r.data.params["name"]: r for r in runs}
    assert set(by_name) == {
        "sentiment steering", "city → country", "city → country (shuffled labels)"
    }
    assert all(r.info.status == "FINISHED" for r in runs)
    probe = by_name["city → country"].data.metrics
    control = by_name["city → country (shuffled labels)"].data.metrics
    assert probe["accuracy"] > control["accuracy"]  # the tiny analog knows its cities
    assert "effect" in by_name["sentiment steering"].data.metrics
    assert not (reader.home / "mlflow" / "mlflow.db").exists()  # the platform's store only


@pytest.mark.slow
def test_analog_fidelity_runs(
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = execute("05-analog-fidelity.ipynb", tmp_path, monkeypatch, FRONTIER="tiny-frontier")
    text = text_of(nb)
    html = "".join(
        out.get("data", {}).get("text/html", "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
    )
    assert "tiny-analog-m" in html and "tiny-analog-s" in html and "KL" in html  # the cards
    assert "KL (card)" in text and "CKA (mean)" in text  # the cards checked here
    for name in ("tiny-analog-m", "tiny-analog-s"):
        assert f"{name}: transfer score" in text
    assert text.count("highest ") == 2
    assert images_of(nb) == 1


@pytest.mark.slow
def test_checking_transfer_without_a_queue_says_what_to_set(
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 03 runs end to end against real services in tests/lab/test_end_to_end.py; here, the
    # same notebook opened where no queue is configured stops at once with what to do.
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(CellExecutionError) as failed:
        execute("03-checking-transfer.ipynb", tmp_path, monkeypatch, ANALOG="tiny-analog-s")
    assert "no queue is configured" in str(failed.value)
    assert "ANALOGLAB_QUEUE_URL" in str(failed.value)
