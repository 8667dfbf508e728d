"""Opening a store with dask, on a real LocalCluster: lazy arrays, the view by hook, and the
analyses on a real store against NumPy on the same rows read whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analoglab.activations import (
    ActivationError,
    Source,
    diff_of_means,
    extract,
    linear_cka,
    mean_and_covariance,
    open_activations,
    pca,
    save_artifact,
    top_activating,
)
from analoglab.models.loading import LoadedModel


@pytest.fixture(scope="module")
def store(tiny_models: dict[str, LoadedModel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "sentiment-all"
    extract(
        tiny_models["analog"],
        Source.task_set("sentiment", n=40),
        hooks=[0.0, 1.0],
        store=path,
        batch_size=8,
        chunk_mb=0.02,  # several chunks
    )
    return path


def test_open_is_lazy_and_views_select_rows(store: Path, client: Any) -> None:
    ds = open_activations(store)
    view = ds["blocks.1.hook_resid_post"]
    assert view.data.numblocks[0] > 1  # chunked as stored, nothing read yet
    assert ds[1.0].hook == view.hook and ds[0.0].hook == "blocks.0.hook_resid_post"
    assert ds[0.5].hook == view.hook  # as extraction resolves depth 0.5 of 2 blocks
    assert view.dims == ("row", "feature") and view.shape == (ds.n_rows, 24)
    assert "sentiment" in repr(ds) and "rows × 24 features" in repr(view)
    whole = view.compute()
    labels = view.labels()
    positive = view.sel(label="positive")
    assert np.array_equal(positive.compute(), whole[labels == "positive"])
    first = view.sel(prompt=0, position=[0, 1])
    assert first.n_rows == 2 and np.array_equal(first.compute(), whole[:2])
    assert np.array_equal(view.isel(slice(3, 5)).compute(), whole[3:5])
    with pytest.raises(ActivationError, match="no hook 'blocks.7.hook_z'"):
        ds["blocks.7.hook_z"]
    with pytest.raises(ActivationError, match="no label 'neutral'"):
        view.sel(label="neutral")
    with pytest.raises(ActivationError, match="does not exist"):
        open_activations(store.parent / "nothing-here")


def test_analyses_on_a_store_agree_with_numpy(store: Path, client: Any, tmp_path: Path) -> None:
    ds = open_activations(store)
    view = ds[1.0]
    x = view.compute().astype(np.float64)
    labels = view.labels()
    mc = mean_and_covariance(view)
    np.testing.assert_allclose(mc.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    direction = diff_of_means(view, positive="positive", negative="negative")
    ref = x[labels == "positive"].mean(0) - x[labels == "negative"].mean(0)
    np.testing.assert_allclose(direction.vector, ref, rtol=1e-9, atol=1e-12)
    top = pca(view, 3)
    assert top.explained_variance_ratio[0] > top.explained_variance_ratio[2] > 0
    # Each layer is perfectly similar to itself, and less so to the other layer.
    assert linear_cka(view, view) == pytest.approx(1.0)
    assert linear_cka(ds[0.0], view) < 0.99
    hits = top_activating(view, direction, k=5, tokenizer=ds.tokenizer(), context=4)
    scores = x @ (ref / np.linalg.norm(ref))
    # the five rows of highest score, in order (rows whose scores tie to float rounding, as
    # two of them do on some builds, may come in either order)
    rows = [h.row for h in hits]
    assert len(set(rows)) == 5
    np.testing.assert_allclose(scores[rows], np.sort(scores)[::-1][:5], rtol=1e-9, atol=1e-9)
    for hit in hits:
        assert hit.token is not None and hit.context is not None and hit.context.endswith(hit.token)
    saved = save_artifact(direction, tmp_path / "direction", dataset=ds)
    import json

    record = json.loads(saved.json.read_text())
    assert record["dataset"]["weights_sha256"] == ds.meta.identity.model.weights_sha256
    assert record["dataset"]["hooks"] == ds.hooks and record["summary"]["kind"] == "diff_of_means"
