"""Activation datasets: extraction to zarr stores, and their out-of-core analysis with Dask.

Build a dataset, open it lazily, analyse it on a laptop or a cluster::

    from analoglab.activations import Source, cluster, extract, open_activations
    from analoglab.activations import diff_of_means, linear_cka, pca, train_probe

    extract("demo-analog-s", Source.task_set("sentiment", n=400), hooks=[0.5, 1.0],
            positions="last", store="sentiment-s")
    client = cluster()                       # Dask Gateway on the hub, else a LocalCluster
    ds = open_activations("sentiment-s")
    view = ds[1.0]                           # the hook at relative depth 1.0
    direction = diff_of_means(view, positive="positive", negative="negative")

Modules, one concept each: :mod:`.sources` (prompts, task sets, text files),
:mod:`.store` (the zarr layout, metadata, life cycle), :mod:`.writer` (the writer thread),
:mod:`.extraction`, :mod:`.reporting` (progress), :mod:`.dataset` (opening with
dask), :mod:`.matrix` (what analyses accept), :mod:`.stats`, :mod:`.decomposition` (PCA),
:mod:`.directions`, :mod:`.probe`, :mod:`.cka`, :mod:`.search`, :mod:`.artifacts`,
:mod:`.clusters`, :mod:`.commands` (the CLI's work), :mod:`.errors`. See
``docs/activations.md``.

Names are imported on first use: importing this package loads neither torch, dask nor zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from analoglab.activations.errors import (
    ActivationError,
    IncompleteStoreError,
    StoreMismatchError,
)

if TYPE_CHECKING:
    from analoglab.activations.artifacts import Artifact, load_artifact, save_artifact
    from analoglab.activations.cka import linear_cka
    from analoglab.activations.clusters import cluster, dashboard_link
    from analoglab.activations.dataset import ActivationDataset, HookView, open_activations
    from analoglab.activations.decomposition import PCAResult, pca
    from analoglab.activations.directions import Direction, diff_of_means
    from analoglab.activations.extraction import ExtractionSummary, extract
    from analoglab.activations.probe import Probe, split_by_prompt, train_probe
    from analoglab.activations.reporting import TqdmReporter
    from analoglab.activations.search import TokenHit, top_activating
    from analoglab.activations.sources import Source
    from analoglab.activations.stats import MeanCovariance, mean, mean_and_covariance
    from analoglab.activations.store import StoreMeta, describe, list_stores

_WHERE = {
    "Artifact": "artifacts",
    "load_artifact": "artifacts",
    "save_artifact": "artifacts",
    "linear_cka": "cka",
    "cluster": "clusters",
    "dashboard_link": "clusters",
    "ActivationDataset": "dataset",
    "HookView": "dataset",
    "open_activations": "dataset",
    "Direction": "directions",
    "diff_of_means": "directions",
    "ExtractionSummary": "extraction",
    "extract": "extraction",
    "PCAResult": "decomposition",
    "pca": "decomposition",
    "Probe": "probe",
    "split_by_prompt": "probe",
    "train_probe": "probe",
    "TqdmReporter": "reporting",
    "TokenHit": "search",
    "top_activating": "search",
    "Source": "sources",
    "MeanCovariance": "stats",
    "mean": "stats",
    "mean_and_covariance": "stats",
    "StoreMeta": "store",
    "describe": "store",
    "list_stores": "store",
}

__all__ = [
    "ActivationDataset",
    "ActivationError",
    "Artifact",
    "Direction",
    "ExtractionSummary",
    "HookView",
    "IncompleteStoreError",
    "MeanCovariance",
    "PCAResult",
    "Probe",
    "Source",
    "StoreMeta",
    "StoreMismatchError",
    "TokenHit",
    "TqdmReporter",
    "cluster",
    "dashboard_link",
    "describe",
    "diff_of_means",
    "extract",
    "linear_cka",
    "list_stores",
    "load_artifact",
    "mean",
    "mean_and_covariance",
    "open_activations",
    "pca",
    "save_artifact",
    "split_by_prompt",
    "top_activating",
    "train_probe",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'analoglab.activations' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analoglab.activations.{module}"), name)
