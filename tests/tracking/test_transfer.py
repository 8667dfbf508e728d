"""TransferCheckRun: the parent/child structure, the report, and reopening after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from analoglab.config import Settings
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.spec import AnySpec, parse_spec, spec_to_dict
from analoglab.experiments.transfer import TransferReport, compare
from analoglab.tracking import TrackingError, TrackingStore, TransferCheckRun, log_result
from analoglab.tracking.results import result_tags

MakeResult = Callable[..., ExperimentResult]


def children(store: TrackingStore, check: TransferCheckRun) -> dict[str, list[str]]:
    runs = store.client.search_runs(
        [check.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{check.run_id}'"
    )
    out: dict[str, list[str]] = {}
    for run in runs:
        out.setdefault(run.data.tags["analoglab.model"], []).append(run.info.run_id)
    return out


def test_a_transfer_check_is_a_parent_with_a_child_per_model_and_resumes(
    backend: Settings, experiment: str, spec: AnySpec, make_result: MakeResult, tmp_path: Path
) -> None:
    analog = make_result(spec, "an", values=[0.5, 0.9, 0.7], effect=0.6)
    frontier = make_result(spec, "fr", values=[0.5, 0.6, 0.95, 0.9, 0.8], effect=0.8, weights="f")
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=backend, experiment=experiment
    )
    assert check.job_id is None and check.analog_result() is None and check.report() is None
    analog_run = check.log_analog(analog)
    check.set_job("job-42")
    frontier_run = check.log_frontier(frontier)
    report = compare(analog, frontier)
    check.log_report(report)

    store = TrackingStore.open(backend)
    parent = store.client.get_run(check.run_id)
    assert parent.info.status == "FINISHED"
    ptags = parent.data.tags
    assert ptags["analoglab.kind"] == "transfer" and ptags["analoglab.job_id"] == "job-42"
    assert ptags["analoglab.spec_hash"] == analog.spec_hash
    assert (ptags["analoglab.analog"], ptags["analoglab.frontier"]) == ("an", "fr")
    assert ptags["analoglab.verdict"] == report.verdict
    assert parent.data.params["method"] == "probe"
    assert parent.data.metrics["transfer.score"] == pytest.approx(report.score)
    for part in report.parts:
        assert parent.data.metrics[f"transfer.{part.name}"] == pytest.approx(part.value)
    names = {f.path for f in store.client.list_artifacts(check.run_id)}
    assert names == {"spec.json", "transfer_report.json", "plots"}
    report_file = store.client.download_artifacts(
        check.run_id, "transfer_report.json", dst_path=str(tmp_path)
    )
    assert TransferReport.model_validate_json(Path(report_file).read_text()) == report
    overlay = [f.path for f in store.client.list_artifacts(check.run_id, "plots")]
    assert overlay == ["plots/accuracy.png"]

    assert children(store, check) == {"an": [analog_run], "fr": [frontier_run]}
    a_run, f_run = store.client.get_run(analog_run), store.client.get_run(frontier_run)
    assert a_run.data.tags["analoglab.kind"] == "analog"
    assert "analoglab.job_id" not in a_run.data.tags
    assert f_run.data.tags["analoglab.kind"] == "frontier"
    assert f_run.data.tags["analoglab.job_id"] == "job-42"
    assert f_run.data.params["model.weights_sha256"] == "f" * 64
    assert len(store.client.get_metric_history(frontier_run, "profile.accuracy")) == 5

    # A restarted process: the same parent, its job, its children, nothing logged twice.
    again = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=backend, experiment=experiment
    )
    assert again.run_id == check.run_id and again.job_id == "job-42"
    assert again.analog_run_id() == analog_run and again.frontier_run_id() == frontier_run
    assert again.analog_result() == analog and again.frontier_result() == frontier
    assert again.report() == report
    assert again.log_analog(analog) == analog_run
    assert again.log_frontier(frontier) == frontier_run
    again.log_report(report)
    assert children(store, check) == {"an": [analog_run], "fr": [frontier_run]}
    assert len(store.client.get_metric_history(check.run_id, "transfer.score")) == 1
    assert len(store.client.get_metric_history(analog_run, "effect")) == 1
    # Another frontier, or another spec, is another check.
    other = TransferCheckRun.open(
        spec, analog="an", frontier="fr-2", settings=backend, experiment=experiment
    )
    assert other.run_id != check.run_id and other.job_id is None
    respec = parse_spec({**spec_to_dict(spec), "seed": 3})
    assert (
        TransferCheckRun.open(
            respec, analog="an", frontier="fr", settings=backend, experiment=experiment
        ).run_id
        != check.run_id
    )


@pytest.mark.parametrize("status", ["RUNNING", "FAILED"])
def test_a_child_left_unfinished_is_replaced_not_logged_into(
    fresh_home: Settings, experiment: str, spec: AnySpec, make_result: MakeResult, status: str
) -> None:
    analog = make_result(spec, "an")
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
    )
    store = check.store
    # What a crash while logging leaves behind: a child with some of an earlier attempt's
    # params (another device, other versions) and metrics.
    crashed = store.client.create_run(
        check.experiment_id,
        tags={
            **result_tags(analog, model="an", kind="analog", job_id=None),
            "mlflow.parentRunId": check.run_id,
        },
    ).info.run_id
    store.client.log_param(crashed, "device", "cuda:0")
    store.client.log_param(crashed, "version.torch", "0.0-old")
    store.client.log_metric(crashed, "effect", 0.1)
    if status == "FAILED":
        store.client.set_terminated(crashed, status="FAILED")
    assert check.analog_result() is None  # not finished: does not count

    fresh = check.log_analog(analog)
    assert fresh != crashed
    assert store.client.get_run(crashed).info.lifecycle_stage == "deleted"
    assert children(store, check) == {"an": [fresh]}  # exactly one live child
    run = store.client.get_run(fresh)
    assert run.info.status == "FINISHED"
    assert run.data.params["device"] == "cpu"
    assert run.data.params["version.torch"] == analog.versions["torch"]
    assert [m.value for m in store.client.get_metric_history(fresh, "effect")] == [0.6]
    assert check.analog_result() == analog and check.analog_run_id() == fresh


def test_a_parent_left_half_set_up_is_completed_on_reopen(
    fresh_home: Settings, experiment: str, spec: AnySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies after the params, before spec.json

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_text", killed)
        with pytest.raises(KeyboardInterrupt):
            TransferCheckRun.open(
                spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
            )
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
    )
    store = check.store
    parents = store.client.search_runs(
        [check.experiment_id], filter_string="tags.`analoglab.kind` = 'transfer'"
    )
    assert [p.info.run_id for p in parents] == [check.run_id]  # the same parent
    parent = store.client.get_run(check.run_id)
    assert parent.data.tags["analoglab.ready"] == "1"
    assert parent.data.params["method"] == "probe"
    assert json.loads(store.read_text(check.run_id, "spec.json") or "") == spec_to_dict(spec)


def test_damaged_artifacts_and_artifact_folders_are_one_error(
    fresh_home: Settings,
    experiment: str,
    spec: AnySpec,
    make_result: MakeResult,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
    )
    run_id = check.log_analog(make_result(spec, "an"))
    check.store.client.log_text(run_id, '{"method": "probe"}\n', "result.json")
    with pytest.raises(TrackingError, match="damaged result.json"):
        check.analog_result()

    def unwritable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/srv/mlflow/artifacts")

    monkeypatch.setattr(MlflowClient, "log_artifacts", unwritable)
    with pytest.raises(TrackingError, match="artifact storage failed: Permission denied"):
        check.log_frontier(make_result(spec, "fr", weights="f"))
    (failed,) = children(check.store, check)["fr"]
    assert check.store.client.get_run(failed).info.status == "FAILED"


def test_what_does_not_belong_to_the_check_is_refused(
    fresh_home: Settings, experiment: str, spec: AnySpec, make_result: MakeResult
) -> None:
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
    )
    other_spec = parse_spec({**spec_to_dict(spec), "seed": 7})
    with pytest.raises(TrackingError, match="this transfer check's spec"):
        check.log_frontier(make_result(other_spec, "fr"))
    check.log_analog(make_result(spec, "an", weights="a"))
    with pytest.raises(TrackingError, match="other weights"):
        check.log_analog(make_result(spec, "an", weights="b"))
    # A second analog is a child of its own.
    second = check.log_analog(make_result(spec, "an-2", weights="c"), model="an-2")
    assert second == check.analog_run_id("an-2") != check.analog_run_id()
    foreign = compare(make_result(other_spec, "an"), make_result(other_spec, "fr"))
    with pytest.raises(TrackingError, match="transfer report is of spec"):
        check.log_report(foreign)
    assert check.report() is None


def test_log_result_can_hang_a_run_under_a_check(
    fresh_home: Settings, experiment: str, spec: AnySpec, make_result: MakeResult
) -> None:
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=fresh_home, experiment=experiment
    )
    run_id = log_result(
        spec,
        make_result(spec, "an"),
        model="an",
        parent_run_id=check.run_id,
        settings=fresh_home,
        experiment=experiment,
    )
    assert check.analog_run_id() == run_id  # found as the check's analog child


def with_replicates(result: ExperimentResult, spread: float) -> ExperimentResult:
    """The result with a bootstrap of 40 replicates around its effect, accuracy and profile."""
    from analoglab.experiments.uncertainty import make_replicates

    shifts = np.linspace(-spread, spread, 40)
    profile = np.asarray(result.profiles["accuracy"].values)
    boot = make_replicates(
        resamples=40,
        seed=0,
        items={"test": 24},
        metrics={
            "effect": result.metrics["effect"] + shifts,
            "accuracy": result.metrics["accuracy"] + shifts / 2,
        },
        profiles={"accuracy": profile[None, :] + shifts[:, None] / 4},
    )
    return result.model_copy(update={"bootstrap": boot})


def test_the_intervals_are_metrics_and_the_bootstrap_an_artifact(
    backend: Settings, experiment: str, spec: AnySpec, make_result: MakeResult, tmp_path: Path
) -> None:
    analog = with_replicates(make_result(spec, "an", values=[0.5, 0.9, 0.7], effect=0.6), 0.1)
    frontier = with_replicates(
        make_result(spec, "fr", values=[0.5, 0.95, 0.8], effect=0.8, weights="f"), 0.05
    )
    check = TransferCheckRun.open(
        spec, analog="an", frontier="fr", settings=backend, experiment=experiment
    )
    check.log_analog(analog)
    check.log_frontier(frontier)
    report = compare(analog, frontier)
    assert report.score_interval is not None
    check.log_report(report)
    store = TrackingStore.open(backend)
    metrics = store.client.get_run(check.run_id).data.metrics
    assert metrics["transfer.score.low"] == pytest.approx(report.score_interval.low)
    assert metrics["transfer.score.high"] == pytest.approx(report.score_interval.high)
    for part in report.parts:
        assert part.interval is not None
        assert metrics[f"transfer.{part.name}.low"] == pytest.approx(part.interval.low)
    names = {f.path for f in store.client.list_artifacts(check.run_id)}
    assert "transfer_bootstrap.json" in names
    path = store.client.download_artifacts(
        check.run_id, "transfer_bootstrap.json", dst_path=str(tmp_path)
    )
    boot = json.loads(Path(path).read_text())
    assert boot["resamples"] == 40 and boot["items"] == {"test": 24}
    assert boot["distribution"]["score"] == report.distribution["score"]
    assert check.report() == report
