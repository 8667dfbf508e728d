"""The shared notebooks (``shared-notebooks/``) as stored, and where a laptop differs from the
platform: every one is stored clean; ``03`` opened where no queue is configured says what to
set; ``05`` on a laptop with the demo build (the demo lab's site here, its frontier readable)
measures the analogs against the frontier, which on the platform it cannot.

Those run in a plain Jupyter kernel that inherits the test's environment: the tiny build's
model store, catalog and lab sites, only read; ``ANALOG`` / ``FRONTIER`` pick the tiny build's
models. Where the notebooks run for researchers, from top to bottom: 01, 02, 04 and 05 in a
researcher's server on the running platform (``test_on_the_platform.py``), 03 there too, end
to end with a reviewer and the lab's agent (``tests/hub/test_platform_end_to_end.py``); 03 and
06 against a real queue, lab agent and MLflow server in ``tests/lab/test_end_to_end.py``.
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


def html_of(nb: Any) -> str:
    """Everything the code cells displayed as HTML (tables)."""
    return "".join(
        out.get("data", {}).get("text/html", "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
    )


def images_of(nb: Any) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def test_there_are_six_shared_notebooks() -> None:
    assert [p.name.split("-")[0] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


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
def test_analog_fidelity_with_the_frontier_on_this_machine(
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = execute("05-analog-fidelity.ipynb", tmp_path, monkeypatch, FRONTIER="tiny-frontier")
    text = text_of(nb)
    html = html_of(nb)
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


@pytest.mark.slow
def test_carrying_a_finding_without_a_queue_says_what_to_set(
    reader: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 06 runs end to end against real services in tests/lab/test_end_to_end.py.
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(CellExecutionError) as failed:
        execute("06-carrying-a-finding.ipynb", tmp_path, monkeypatch, ANALOG="tiny-analog-s")
    assert "no queue is configured" in str(failed.value)
    assert "ANALOGLAB_QUEUE_URL" in str(failed.value)
