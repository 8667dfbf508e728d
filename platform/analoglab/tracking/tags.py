"""The tags Analog Lab puts on MLflow runs, registered models and model versions.

Every run we log carries ``analoglab.kind``: ``analog`` or ``frontier`` for an experiment
result (which model the spec ran on), ``transfer`` for the parent run of a transfer check,
``card`` for the run that logged an analog card. Runs are found again by these tags, never by
their names, so renaming a run in the UI breaks nothing.
"""

from __future__ import annotations

from typing import Final, Literal

PREFIX: Final = "analoglab."
MODEL: Final = "analoglab.model"
METHOD: Final = "analoglab.method"
JOB_ID: Final = "analoglab.job_id"
SPEC_HASH: Final = "analoglab.spec_hash"
KIND: Final = "analoglab.kind"
ANALOG: Final = "analoglab.analog"
FRONTIER: Final = "analoglab.frontier"
LAB: Final = "analoglab.lab"
VERDICT: Final = "analoglab.verdict"
WEIGHTS_SHA256: Final = "analoglab.weights_sha256"
ANALOGS: Final = "analoglab.analogs"
# Set last on a transfer check's parent, once its params and spec.json are logged.
READY: Final = "analoglab.ready"

# MLflow's own tags.
PARENT_RUN_ID: Final = "mlflow.parentRunId"
NOTE: Final = "mlflow.note.content"

ResultKind = Literal["analog", "frontier"]
KIND_TRANSFER: Final = "transfer"
KIND_CARD: Final = "card"


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow ``search_runs`` filter matching every tag exactly.

    Keys are back-quoted (ours contain dots); a value holding a quote cannot be matched by
    MLflow's filter grammar, so callers keep such values out and compare them in Python.
    """
    for value in tags.values():
        if "'" in value or "\\" in value:
            raise ValueError(f"tag value {value!r} cannot go in a filter string")
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
