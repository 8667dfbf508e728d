"""The shared notebooks run where researchers run them: in a kernel of a researcher's own
server on the running platform.

``analoglab up`` over a copy of the session's ``tiny_build``; an admin adds a researcher, whose
server starts through the hub (as its own OS user when the tests run as root). Each notebook is
the researcher's own copy, ``~/shared-notebooks/<name>``, as the server hands it out; its cells
run in order in a kernel of that server started in that folder (over the kernel's websocket, as
a JupyterLab tab runs them), with only ``ANALOG``/``FRONTIER`` and a smaller ``N_PROMPTS`` set
first (the researcher's choice of the tiny build's models). Everything else comes from the
server: the model store, the catalog, MLflow behind the hub's gate (``04`` logs there; the test
reads the runs back through the gate with the researcher's token), Dask (``02`` starts a local
cluster, whose dashboard must open through the server's proxy, where the JupyterLab Dask
extension points). ``03`` runs end to end in ``tests/hub/test_platform_end_to_end.py``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import nbformat
import pytest

from analoglab.config import Settings
from analoglab.foundry.build import BuildResult

from ..hubtools import Kernel, kernel_text, run_cells
from ..platformtools import Running, copy_of, platform_in, start_server
from .test_notebooks import html_of, images_of, text_of

pytestmark = pytest.mark.slow


@dataclass
class Researcher:
    platform: Running
    name: str
    token: str

    @property
    def server(self) -> str:
        return f"{self.platform.url}/user/{self.name}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def notebook(self, name: str) -> dict[str, Any]:
        """The researcher's copy of a shared notebook, from their server's contents API."""
        resp = httpx.get(
            f"{self.server}/api/contents/shared-notebooks/{name}", headers=self.headers, timeout=30
        )
        assert resp.status_code == 200, resp.text[:500]
        content: dict[str, Any] = resp.json()["content"]
        return content

    def run(
        self, name: str, env: dict[str, str], after: Any = None, then: str = "", stop: bool = False
    ) -> tuple[Any, str]:
        """Run the researcher's copy of ``name`` in a new kernel in its folder, ``env`` set
        first and the code ``then`` last; the notebook with its outputs, and what ``then``
        printed. ``stop``: a failing cell stops the run, as "Run All" does."""
        nb = self.notebook(name)
        kernel = Kernel(self.server, self.token, path="shared-notebooks")
        try:
            kernel_text(kernel, f"import os; os.environ.update({env!r})")
            run_cells(kernel, nb["cells"], timeout=600, after=after, stop=stop)
            printed = kernel_text(kernel, then) if then else ""
        finally:
            kernel.close()
            httpx.delete(f"{self.server}/api/kernels/{kernel.id}", headers=self.headers, timeout=30)
        return nbformat.from_dict(nb), printed


@pytest.fixture(scope="module")
def researcher(tiny_build: tuple[Settings, BuildResult]) -> Iterator[Researcher]:
    with platform_in(copy_of(tiny_build[0].home)) as up:
        name = f"r{secrets.token_hex(3)}"
        done = up.run("users", "add", name, "--json")
        assert done.returncode == 0, done.stderr
        up.users[name] = json.loads(done.stdout)["password"]
        token = up.user_token(name)
        start_server(up, name, token)
        yield Researcher(up, name, token)


def mlflow_runs(researcher: Researcher, model: str) -> list[dict[str, Any]]:
    """The runs of ``model`` in the platform's MLflow, read through the hub's gate."""
    api = researcher.platform.url + "/services/mlflow/api/2.0/mlflow"
    experiments = httpx.post(
        f"{api}/experiments/search",
        headers=researcher.headers,
        json={"max_results": 100},
        timeout=60,
    )
    assert experiments.status_code == 200, experiments.text[:500]
    ids = [e["experiment_id"] for e in experiments.json().get("experiments", [])]
    found = httpx.post(
        f"{api}/runs/search",
        headers=researcher.headers,
        json={"experiment_ids": ids, "filter": f"tags.`analoglab.model` = '{model}'"},
        timeout=60,
    )
    assert found.status_code == 200, found.text[:500]
    runs: list[dict[str, Any]] = found.json().get("runs", [])
    return runs


def test_the_quickstart(researcher: Researcher) -> None:
    nb, _ = researcher.run("01-quickstart.ipynb", {"ANALOG": "tiny-analog-s"})
    text = text_of(nb)
    assert "frontier   tiny-frontier" in text and "lab        tiny-lab" in text
    assert "% of the frontier's" in text and "top-1 agreement" in text
    assert "overall it was →" in text  # generated
    assert "64 reviews × 2 hook points" in text
    assert "PC 1 separates the two sentiments" in text
    assert images_of(nb) == 1


def test_activation_datasets_with_the_dask_dashboard_in_jupyterlab(
    researcher: Researcher,
) -> None:
    dashboards: list[httpx.Response] = []

    def look_at_the_dashboard(kernel: Kernel, cell: dict[str, Any]) -> None:
        # once the notebook's cluster runs, its dashboard opens where JupyterLab's Dask
        # extension links to: the server's own proxy, signed in as the researcher
        if "cluster(" not in "".join(cell["source"]):
            return
        link = kernel_text(kernel, "print(client.dashboard_link)").strip()
        assert link.startswith(f"/user/{researcher.name}/proxy/"), link
        dashboards.append(
            httpx.get(researcher.platform.url + link, headers=researcher.headers, timeout=60)
        )

    nb, stores = researcher.run(
        "02-activation-datasets.ipynb",
        {"ANALOG": "tiny-analog-s", "N_PROMPTS": "48", "DASK_WORKERS": "1"},
        after=look_at_the_dashboard,
        then="import json; from analoglab.activations import list_stores\n"
        "print(json.dumps({'home': str(Path.home()), 'workdir': str(WORKDIR), "
        "'stores': list_stores(WORKDIR)}, default=str))",
    )
    text = text_of(nb)
    assert "held-out accuracy" in text and "CKA(" in text
    assert len(dashboards) == 1
    page = dashboards[0]
    assert page.status_code == 200, page.text[:500]
    assert "Dask" in page.text and "bokeh" in page.text.lower()
    # the stores are complete, in the researcher's own folder
    found = json.loads(stores)
    assert found["workdir"].startswith(found["home"]), found
    states = {s["name"]: s["state"] for s in found["stores"]}
    assert states == {
        "tiny-analog-s-sentiment-all": "complete",
        "tiny-analog-s-sentiment-last": "complete",
        "tiny-analog-m-sentiment-last": "complete",
    }, states
    # the JupyterLab Dask extension is there, and answers as the researcher
    clusters = httpx.get(
        f"{researcher.server}/dask/clusters", headers=researcher.headers, timeout=30
    )
    assert clusters.status_code == 200, clusters.text[:500]


def test_steering_and_probes_land_in_the_platforms_mlflow(researcher: Researcher) -> None:
    nb, _ = researcher.run("04-steering-and-probes.ipynb", {"ANALOG": "tiny-analog-s"})
    text = text_of(nb)
    assert f"MLflow: {researcher.platform.url}/services/mlflow" in text
    assert "sentiment vector at blocks." in text and "scale +4: P(' good')" in text
    p_good = {  # P(' good') at each steering scale, as printed
        int(line.split(":")[0].split()[1]): float(line.split("P(' good')")[1].split()[0])
        for line in text.splitlines()
        if line.startswith("scale ") and "P(' good')" in line
    }
    assert p_good[4] > p_good[0] > p_good[-4]  # the direction steers
    assert "the probe beats its control by" in text
    assert images_of(nb) == 2
    runs = mlflow_runs(researcher, "tiny-analog-s")
    by_name = {
        p["value"]: r for r in runs for p in r["data"].get("params", []) if p["key"] == "name"
    }
    assert set(by_name) == {
        "sentiment steering",
        "city → country",
        "city → country (shuffled labels)",
    }
    assert all(r["info"]["status"] == "FINISHED" for r in runs)

    def metrics(run: dict[str, Any]) -> dict[str, float]:
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    probe, control = (
        metrics(by_name["city → country"]),
        metrics(by_name["city → country (shuffled labels)"]),
    )
    assert probe["accuracy"] > control["accuracy"]  # the tiny analog knows its cities
    assert "effect" in metrics(by_name["sentiment steering"])


def test_analog_fidelity_from_the_cards(researcher: Researcher) -> None:
    """On the platform the frontier's weights stay with its lab: the cards compare, and the
    notebook says why it stops before measuring against the frontier (on a laptop with the
    demo build it goes on: ``test_notebooks.py``)."""
    nb, _ = researcher.run("05-analog-fidelity.ipynb", {"FRONTIER": "tiny-frontier"}, stop=True)
    text = text_of(nb)
    html = html_of(nb)
    assert "tiny-analog-m" in html and "tiny-analog-s" in html and "KL" in html  # the cards
    assert "tiny-frontier is not on this machine" in text and "notebook 03" in text
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(errors) == 1 and "needs the frontier's weights" in "".join(errors[0]["traceback"])
    assert "KL (card)" not in text  # nothing measured
