"""Shared results in MLflow: experiment runs, transfer checks and analog cards.

- :func:`log_result` — one result (a spec on one model) as a run: params, metrics, the spec
  and result as JSON, PNG plots of its layer profiles, ``analoglab.*`` tags;
- :class:`TransferCheckRun` — a transfer check as a parent run with a child per model and the
  transfer report; found again by its tags, so a restarted check resumes;
- :func:`register_analogs` — analog cards in the model registry with their lineage;
- :mod:`.artifacts` — an analog's steering vector (or probe direction) logged on its run
  (:func:`log_artifact`, :func:`steering_vector`) and named again by reference,
  ``mlflow:runs/<id>/artifacts/<path>`` (:func:`resolve_artifact`);
- :mod:`.store` — where: ``Settings.mlflow_tracking_uri``, else a SQLite store in the data
  folder; :mod:`.server` — the ``mlflow server`` of the one-machine platform;
- :mod:`.gate` — MLflow behind the hub's sign-in (OAuth for browsers, hub tokens for
  programs), forwarding as :mod:`.proxy` decides.

Nothing here imports mlflow until it is called (its import takes seconds), and nothing
changes MLflow's global tracking URI: each call builds its own client.
"""

from __future__ import annotations

from analoglab.tracking.artifacts import log_artifact, resolve_artifact, steering_vector
from analoglab.tracking.errors import TrackingError
from analoglab.tracking.registry import AnalogRegistration, register_analogs
from analoglab.tracking.results import log_result
from analoglab.tracking.store import DEFAULT_EXPERIMENT, TrackingStore, tracking_uri
from analoglab.tracking.transfer import TransferCheckRun

__all__ = [
    "DEFAULT_EXPERIMENT",
    "AnalogRegistration",
    "TrackingError",
    "TrackingStore",
    "TransferCheckRun",
    "log_artifact",
    "log_result",
    "register_analogs",
    "resolve_artifact",
    "steering_vector",
    "tracking_uri",
]
