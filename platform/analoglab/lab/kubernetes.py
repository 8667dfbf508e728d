"""The Kubernetes executor: each job runs as a ``batch/v1`` Job on the lab's own cluster.

This module owns everything the lab agent sends to a Kubernetes API server:

- :func:`build_job`, a pure builder of the Job for one task: the lab's worker image running
  ``python -m analoglab.lab.worker once``, its GPU/CPU/memory limits, node selector and
  tolerations, a locked-down pod (non-root, read-only root filesystem, no capabilities, no
  service account token, no hub token in its environment), the frontier weights mounted
  read-only from the lab's PersistentVolumeClaim, and the label that the lab's NetworkPolicy
  uses to cut the pod off the network;
- :func:`build_network_policy` and :func:`build_agent_rbac`, pure builders of what a lab
  applies once to the namespace: the policy denying the workers all egress (and ingress), and
  the Role and RoleBinding the agent needs (create/get/list/watch/delete Jobs, get/list Pods,
  get pods/log);
- :class:`KubernetesExecutor`, the :class:`~analoglab.lab.executor.Executor` that creates the
  Job with the official ``kubernetes`` client, polls it and its pod, reads the framed result
  (:mod:`analoglab.lab.framing`) from the pod's log with the size bounded *before* it is read,
  reports why a pod failed or never started, and always deletes the Job (its pods with it).

The builders need nothing beyond the standard library; the ``kubernetes`` client (the ``lab``
extra) is imported only when an executor is made. See ``docs/lab-kubernetes.md``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import posixpath
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from typing import Any

import tenacity

from analoglab.errors import ConfigError
from analoglab.lab.config import KubernetesExecutorConfig
from analoglab.lab.executor import MAX_RESULT_BYTES, Outcome, Task
from analoglab.lab.framing import BEGIN as FRAME_BEGIN
from analoglab.lab.framing import END as FRAME_END
from analoglab.lab.framing import FramingError, unframe

log = logging.getLogger(__name__)

#: Labels every worker Job and pod carries.
APP_LABEL = "app.kubernetes.io/name"
APP_NAME = "analoglab-worker"
JOB_ID_LABEL = "analoglab.io/job-id"
FRONTIER_LABEL = "analoglab.io/frontier"
#: The label the lab's NetworkPolicy selects: pods carrying it get no network at all.
EGRESS_LABEL = "analoglab.io/egress"
EGRESS_DENY = "deny"
#: A label unique to one Job's pods (the Job's name): how the executor finds them.
RUN_LABEL = "analoglab.io/run"
FRONTIER_ANNOTATION = "analoglab.io/frontier"
MAX_RESULT_ANNOTATION = "analoglab.io/max-result-bytes"

#: The worker container's name in the pod.
CONTAINER = "worker"
#: Where the pod's writable scratch space and library caches are mounted.
TMP_DIR = "/tmp"
CACHE_DIR = "/cache"
NETWORK_POLICY_NAME = "analoglab-worker-isolation"
AGENT_ROLE_NAME = "analoglab-agent"

#: The longest spec passed on the worker's command line (the kernel caps one argument at 128 KiB).
MAX_SPEC_B64_CHARS = 96 * 1024
#: Room in a pod's log for what is not the framed result (warnings, progress lines).
LOG_SLACK_BYTES = 64 * 1024
LOG_SLACK_LINES = 200
#: How much of a failed pod's output goes into the reason.
TAIL_LINES = 12
TAIL_CHARS = 1500

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
#: Waiting reasons that no amount of waiting fixes: fail at once instead of at the start timeout.
_FATAL_WAITING = {"InvalidImageName", "ErrImageNeverPull"}
#: HTTP statuses after which polling again cannot help.
_PERMANENT = {400, 401, 403, 404, 405, 409, 410, 422}
_EXIT_HINTS = {
    1: "the worker crashed",
    2: "the spec cannot run on this frontier",
    137: "killed (out of memory, or stopped by the cluster)",
}


# -- the pure builders ----------------------------------------------------------------------------


def job_name(job_id: int, suffix: str | None = None) -> str:
    """A DNS-1123 name for one attempt of job ``job_id``: ``analoglab-<id>-<5 random chars>``."""
    if suffix is None:
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return f"analoglab-{job_id}-{suffix}"


def label_value(text: str) -> str:
    """``text`` made into a valid label value (63 characters of ``[A-Za-z0-9._-]``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("._-")


def worker_labels(cfg: KubernetesExecutorConfig) -> dict[str, str]:
    """The labels every worker pod carries, whatever its job (the lab's own labels first)."""
    return {**cfg.labels, APP_LABEL: APP_NAME, EGRESS_LABEL: EGRESS_DENY}


def weights_path(weights: str, mount: str) -> str:
    """Where ``weights`` (a path inside the weights volume) is in the pod.

    A relative path is taken inside the volume; an absolute one must already lie under
    ``mount``. Anything that would leave the volume is refused (:class:`ValueError`).
    """
    root = posixpath.normpath(mount)
    full = posixpath.normpath(posixpath.join(root, weights))
    if full != root and not full.startswith(root.rstrip("/") + "/"):
        raise ValueError(
            f"the weights path {weights!r} is outside the weights volume (mounted at {root}): "
            "with the kubernetes executor a model's path in lab.toml is its path inside the "
            "volume of weights_claim, e.g. 'demo-frontier'"
        )
    return full


def _threads(cpu: str) -> int | None:
    """Whole CPUs in a Kubernetes quantity ("2", "1500m", "0.5"), at least 1; None if unreadable."""
    try:
        value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return max(1, int(value))


def build_job(
    task: Task, cfg: KubernetesExecutorConfig, *, name: str, max_result_bytes: int
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs ``task`` once on the lab's cluster (a plain dict).

    Raises :class:`ValueError` for a name that is not a DNS-1123 label, weights outside the
    volume, or a spec too large for the worker's command line.
    """
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise ValueError(f"{name!r} is not a valid Job name (a DNS-1123 label of 63 characters)")
    if max_result_bytes <= 0:
        raise ValueError("max_result_bytes must be positive")
    spec_b64 = base64.b64encode(
        json.dumps(task.spec, separators=(",", ":"), sort_keys=True).encode()
    ).decode()
    if len(spec_b64) > MAX_SPEC_B64_CHARS:
        raise ValueError(
            f"the spec is {len(spec_b64)} characters as base64, over the {MAX_SPEC_B64_CHARS} "
            "a worker's command line can carry"
        )
    command = [
        "python",
        "-m",
        "analoglab.lab.worker",
        "once",
        "--frontier",
        task.frontier,
        "--weights",
        weights_path(task.weights, cfg.weights_mount),
        "--device",
        "cuda" if cfg.gpus > 0 else "cpu",
    ]
    if task.weights_sha256:
        command += ["--sha256", task.weights_sha256]
    if task.maps:
        # The site's residual maps live in the weights volume too (read-only, like the weights).
        command += ["--maps", weights_path(task.maps, cfg.weights_mount)]
    threads = _threads(cfg.cpu)
    if threads is not None:
        command += ["--threads", str(threads)]
    command += ["--spec-b64", spec_b64]

    labels = {
        **worker_labels(cfg),
        JOB_ID_LABEL: str(task.job_id),
        FRONTIER_LABEL: label_value(task.frontier),
    }
    pod_labels = {**labels, RUN_LABEL: name}
    annotations = {
        FRONTIER_ANNOTATION: task.frontier,
        MAX_RESULT_ANNOTATION: str(max_result_bytes),
    }
    limits: dict[str, str] = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus > 0:
        limits["nvidia.com/gpu"] = str(cfg.gpus)
    env = {
        # The pod has no network: never let a library try the hub, and give it no token.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        # The root filesystem is read-only: everything written goes to the two scratch volumes.
        "HOME": TMP_DIR,
        "TMPDIR": TMP_DIR,
        "XDG_CACHE_HOME": CACHE_DIR,
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
        "MPLCONFIGDIR": f"{CACHE_DIR}/matplotlib",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}, "limits": limits},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "weights", "mountPath": cfg.weights_mount, "readOnly": True},
            {"name": "tmp", "mountPath": TMP_DIR},
            {"name": "cache", "mountPath": CACHE_DIR},
        ],
        # On a crash the termination message is the end of the log: the reason, cheaply.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": cfg.weights_claim, "readOnly": True},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}},
        ],
        "terminationGracePeriodSeconds": 15,
    }
    if cfg.node_selector:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": max(1, math.ceil(cfg.timeout_seconds)),
            "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(annotations)},
                "spec": pod_spec,
            },
        },
    }


def build_network_policy(cfg: KubernetesExecutorConfig) -> dict[str, Any]:
    """The NetworkPolicy a lab applies once: worker pods get no egress (and no ingress).

    It selects every pod labelled ``analoglab.io/egress: deny`` in the executor's namespace and
    lists no allowed peer, so a worker can reach nothing, not even DNS: an experiment cannot
    send anything out except through the result the agent reads from its log. It only takes
    effect where the cluster's network plugin enforces NetworkPolicies.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": cfg.namespace,
            "labels": {APP_LABEL: APP_NAME},
        },
        "spec": {
            "podSelector": {"matchLabels": {EGRESS_LABEL: EGRESS_DENY}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def build_agent_rbac(
    cfg: KubernetesExecutorConfig,
    *,
    service_account: str = "analoglab-agent",
    service_account_namespace: str | None = None,
) -> list[dict[str, Any]]:
    """The Role and RoleBinding that let the agent's service account run jobs in the namespace.

    What :class:`KubernetesExecutor` calls: Jobs (create, get, delete; list and watch too,
    for following Jobs by watching rather than polling), Pods (get, list) and their logs (get).
    Nothing cluster-wide, no Secrets, no exec.
    """
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": AGENT_ROLE_NAME, "namespace": cfg.namespace},
        "rules": [
            {
                "apiGroups": ["batch"],
                "resources": ["jobs"],
                "verbs": ["create", "get", "list", "watch", "delete"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": AGENT_ROLE_NAME, "namespace": cfg.namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": AGENT_ROLE_NAME,
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": service_account,
                "namespace": service_account_namespace or cfg.namespace,
            }
        ],
    }
    return [role, binding]


def log_limit_bytes(max_result_bytes: int) -> int:
    """The most of a pod's log the executor reads: a framed result of the cap, plus slack."""
    encoded = 4 * math.ceil(max_result_bytes / 3)
    return encoded + encoded // 76 + 2 * 160 + LOG_SLACK_BYTES


def _frame_lines(max_result_bytes: int) -> int:
    return math.ceil(4 * math.ceil(max_result_bytes / 3) / 76) + 2


# -- the executor ---------------------------------------------------------------------------------


class _ApiError(Exception):
    """A failed call to the API server; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False):
        super().__init__(message)
        self.status = status
        self.permanent = permanent


class _Failed(Exception):
    """The job failed: why, and what to add to the outcome's details."""

    def __init__(self, reason: str, details: dict[str, Any]):
        super().__init__(reason)
        self.reason = reason
        self.details = details


class KubernetesExecutor:
    """Runs each task as a Job in ``cfg.namespace`` and waits for its result.

    The API server is ``cfg.host`` where set (tests), else the ``cfg.kubeconfig`` file (and
    ``cfg.context``), else the in-cluster service account, else ``~/.kube/config``.
    ``request_timeout`` bounds each API call; ``api_grace_seconds`` is how long polling rides
    out an unreachable API server before the job is failed.
    """

    def __init__(
        self,
        cfg: KubernetesExecutorConfig,
        max_result_bytes: int = MAX_RESULT_BYTES,
        *,
        request_timeout: float = 30.0,
        api_grace_seconds: float = 60.0,
    ) -> None:
        if max_result_bytes <= 0:
            raise ConfigError("max_result_bytes must be positive")
        from kubernetes import client

        self.cfg = cfg
        self.max_result_bytes = max_result_bytes
        self.api_grace_seconds = api_grace_seconds
        self._timeout = (min(10.0, request_timeout), request_timeout)
        self._api = client.ApiClient(_configuration(cfg))
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self.host = str(self._api.configuration.host)

    # -- the Executor protocol ------------------------------------------------------------------

    def run(self, task: Task, cancel: threading.Event) -> Outcome:
        """Create the Job, follow it to its end, read its result, delete it; never raises."""
        start = time.monotonic()
        name = job_name(task.job_id)
        details: dict[str, Any] = {"job_name": name, "namespace": self.cfg.namespace}
        try:
            outcome = self._run(task, cancel, name, start, details)
        except Exception as exc:  # a bug here must not take the agent down
            log.exception("job %s: the kubernetes executor failed", task.job_id)
            outcome = Outcome(
                "failed", reason=f"the kubernetes executor failed: {type(exc).__name__}: {exc}"
            )
        outcome.seconds = round(time.monotonic() - start, 3)
        outcome.details = {**details, **outcome.details}
        return outcome

    def close(self) -> None:
        try:
            self._api.close()
        except Exception:  # closing a pool that never connected, or twice
            log.debug("closing the Kubernetes API client failed", exc_info=True)

    # -- one job ---------------------------------------------------------------------------------

    def _run(
        self,
        task: Task,
        cancel: threading.Event,
        name: str,
        start: float,
        details: dict[str, Any],
    ) -> Outcome:
        try:
            manifest = build_job(task, self.cfg, name=name, max_result_bytes=self.max_result_bytes)
        except ValueError as exc:
            return Outcome("failed", reason=f"cannot build the Job: {exc}")
        if cancel.is_set():
            return Outcome("cancelled", reason="cancelled before the Job was created")
        ns = self.cfg.namespace
        try:
            self._json(
                lambda: self._batch.create_namespaced_job(
                    ns, body=manifest, _preload_content=False, _request_timeout=self._timeout
                )
            )
        except _ApiError as exc:
            if exc.status is None:  # no answer: it may exist all the same
                self._record_cleanup(name, details)
            return Outcome("failed", reason=f"cannot create the Job {name} in {ns}: {exc}")
        log.info("job %s: created Job %s/%s", task.job_id, ns, name)
        try:
            return self._follow(name, cancel, start, details)
        except _Failed as failed:
            return Outcome("failed", reason=failed.reason, details=failed.details)
        finally:
            self._record_cleanup(name, details)

    def _follow(
        self, name: str, cancel: threading.Event, start: float, details: dict[str, Any]
    ) -> Outcome:
        cfg = self.cfg
        start_deadline = start + cfg.start_timeout_seconds
        deadline = start + cfg.timeout_seconds
        last_contact = time.monotonic()
        running_since: float | None = None
        while True:
            if cancel.is_set():
                return Outcome("cancelled", reason="cancelled: the Job was deleted")
            try:
                job = self._read_job(name)
                pod = self._newest_pod(name)
            except _ApiError as exc:
                if exc.status == 404:
                    raise _Failed(
                        f"the Job {name} was deleted by someone else before it finished", {}
                    ) from None
                if exc.permanent:
                    raise _Failed(
                        f"the Kubernetes API refused to show the Job: {exc}", {}
                    ) from None
                if time.monotonic() - last_contact > self.api_grace_seconds:
                    raise _Failed(
                        f"lost the Kubernetes API for over {self.api_grace_seconds:g} s: {exc}", {}
                    ) from None
                log.warning("job %s: polling failed, retrying: %s", name, exc)
                cancel.wait(cfg.poll_seconds)
                continue
            last_contact = now = time.monotonic()
            phase = _get(pod, "status", "phase") if pod else None
            if pod is not None:
                details["pod"] = _get(pod, "metadata", "name")
                if node := _get(pod, "spec", "nodeName"):
                    details["node"] = node
            if running_since is None and phase in ("Running", "Succeeded", "Failed"):
                running_since = now
                details["start_seconds"] = round(now - start, 3)
            if phase == "Succeeded":
                assert pod is not None
                return self._collect(pod, details)
            if phase == "Failed":
                assert pod is not None
                raise _Failed(*self._pod_failure(pod))
            failed = _condition(job, "Failed")
            if failed is not None:
                raise _Failed(_job_failure(name, failed, pod), {})
            if pod is None and _condition(job, "Complete") is not None:
                raise _Failed(f"the Job {name} completed but its pod is gone: no result", {})
            waiting = _waiting(pod)
            if waiting and waiting[0] in _FATAL_WAITING:
                raise _Failed(f"the worker pod cannot start: {': '.join(waiting)}", {})
            if running_since is None and now >= start_deadline:
                raise _Failed(
                    f"the worker pod did not start within {cfg.start_timeout_seconds:g} s "
                    f"({_not_started(pod)})",
                    {},
                )
            if now >= deadline:
                raise _Failed(f"the job ran past its timeout of {cfg.timeout_seconds:g} s", {})
            next_deadline = deadline if running_since is not None else start_deadline
            cancel.wait(max(0.0, min(cfg.poll_seconds, next_deadline - now)))

    def _collect(self, pod: dict[str, Any], details: dict[str, Any]) -> Outcome:
        """The result framed in a finished pod's log, read no further than the cap allows."""
        pod_name = str(_get(pod, "metadata", "name"))
        cap = self.max_result_bytes
        limit = log_limit_bytes(cap)
        try:
            raw, truncated = self._read_log(pod_name, limit)
            if truncated:
                # Too long to read whole: the frame is the worker's last output, so read the
                # end, as many lines as a result of the cap can take.
                lines = _frame_lines(cap) + LOG_SLACK_LINES
                raw, _ = self._read_log(pod_name, limit, tail_lines=lines)
        except _ApiError as exc:
            return Outcome("failed", reason=f"cannot read the worker pod's log: {exc}")
        details["log_bytes"] = len(raw)
        text = raw.decode("utf-8", errors="replace")
        try:
            result = unframe(text, cap)
        except FramingError as exc:
            if truncated:
                reason = (
                    f"the result is larger than the cap of {cap} bytes (the pod's log is over "
                    f"{limit} bytes and its end holds no complete result): {exc}"
                )
            else:
                reason = f"the pod succeeded but gave no usable result: {exc}"
            tail = _tail(text)
            return Outcome("failed", reason=reason, details={"log_tail": tail} if tail else {})
        return Outcome("ok", result=result)

    def _pod_failure(self, pod: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Why a pod failed: its exit code and reason, and the end of what it wrote."""
        out: dict[str, Any] = {}
        parts: list[str] = []
        term = _terminated(pod)
        message = ""
        if term is not None:
            code = term.get("exitCode")
            out["exit_code"] = code
            what = f"the worker exited with code {code}"
            if term.get("reason"):
                what += f" ({term['reason']})"
            if term.get("reason") == "OOMKilled":
                what += f": out of memory (limit {self.cfg.memory})"
            elif isinstance(code, int) and code in _EXIT_HINTS:
                what += f": {_EXIT_HINTS[code]}"
            parts.append(what)
            message = str(term.get("message") or "")
        else:
            parts.append("the worker pod failed")
        if reason := _get(pod, "status", "reason"):
            pod_message = _get(pod, "status", "message")
            parts.append(f"{reason}: {pod_message}" if pod_message else str(reason))
        if not message.strip():
            try:
                raw, _ = self._read_log(
                    str(_get(pod, "metadata", "name")), 16 * 1024, tail_lines=TAIL_LINES
                )
                message = raw.decode("utf-8", errors="replace")
            except _ApiError as exc:
                out["log_error"] = str(exc)
        tail = _tail(message)
        if tail:
            out["log_tail"] = tail
            parts.append(f"last output: {tail}")
        return "; ".join(parts), out

    # -- API calls ---------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, with the client's errors turned into :class:`_ApiError`."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            raise _ApiError(
                _api_message(exc), status=exc.status, permanent=exc.status in _PERMANENT
            ) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            raise _ApiError(
                f"the Kubernetes API at {self.host} is unreachable: {exc.reason}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _ApiError(
                f"the Kubernetes API at {self.host} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc

    def _json(self, fn: Callable[[], Any]) -> dict[str, Any]:
        resp = self._call(fn)
        try:
            data = self._call(lambda: resp.data)
        finally:
            resp.release_conn()
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise _ApiError(f"the Kubernetes API answered with no JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise _ApiError("the Kubernetes API answered with something other than an object")
        return parsed

    def _read_job(self, name: str) -> dict[str, Any]:
        return self._json(
            lambda: self._batch.read_namespaced_job(
                name, self.cfg.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        )

    def _newest_pod(self, name: str) -> dict[str, Any] | None:
        """The Job's most recent pod (found by its own run label), or None before it exists."""
        listing = self._json(
            lambda: self._core.list_namespaced_pod(
                self.cfg.namespace,
                label_selector=f"{RUN_LABEL}={name}",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        pods = [
            p
            for p in listing.get("items") or []
            if isinstance(p, dict) and (_get(p, "metadata", "labels") or {}).get(RUN_LABEL) == name
        ]
        if not pods:
            return None
        return max(pods, key=lambda p: str(_get(p, "metadata", "creationTimestamp") or ""))

    def _read_log(
        self, pod: str, limit: int, *, tail_lines: int | None = None
    ) -> tuple[bytes, bool]:
        """At most ``limit`` bytes of the worker's log, and whether there was more.

        The server is asked for ``limit`` bytes; the client reads no more than one past that
        whatever the server sends, so a huge log never lands in memory.
        """
        extra: dict[str, Any] = {} if tail_lines is None else {"tail_lines": tail_lines}
        resp = self._call(
            lambda: self._core.read_namespaced_pod_log(
                pod,
                self.cfg.namespace,
                container=CONTAINER,
                limit_bytes=limit,
                _preload_content=False,
                _request_timeout=self._timeout,
                **extra,
            )
        )
        try:
            data: bytes = self._call(lambda: resp.read(limit + 1))
        finally:
            resp.close()
            resp.release_conn()
        return data[:limit], len(data) >= limit

    def _delete(self, name: str) -> str | None:
        """Delete the Job and (in the background) its pods; the error if that failed.

        Three tries, 0.2 s then 0.4 s apart (tenacity), unless the API says retrying cannot
        help; a Job already gone counts as deleted."""

        def delete() -> None:
            resp = self._call(
                lambda: self._batch.delete_namespaced_job(
                    name,
                    self.cfg.namespace,
                    propagation_policy="Background",
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
            resp.release_conn()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, _ApiError) and not exc.permanent and exc.status != 404
            ),
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_incrementing(start=0.2, increment=0.2),
            reraise=True,
        )
        try:
            retrying(delete)
        except _ApiError as exc:
            return None if exc.status == 404 else str(exc)
        return None

    def _record_cleanup(self, name: str, details: dict[str, Any]) -> None:
        error = self._delete(name)
        if error is None:
            details["job_deleted"] = True
            log.info("deleted Job %s/%s", self.cfg.namespace, name)
        else:
            details["job_deleted"] = False
            details["cleanup_error"] = error
            log.warning(
                "could not delete Job %s/%s (the cluster removes it %s s after it ends): %s",
                self.cfg.namespace,
                name,
                self.cfg.ttl_seconds_after_finished,
                error,
            )


# -- helpers --------------------------------------------------------------------------------------


def _configuration(cfg: KubernetesExecutorConfig) -> Any:
    """The client configuration: cfg.host, else kubeconfig, else in-cluster, else ~/.kube."""
    from kubernetes import client
    from kubernetes import config as kube_config

    conf = client.Configuration()
    try:
        if cfg.kubeconfig is not None:
            kube_config.load_kube_config(
                config_file=str(cfg.kubeconfig), context=cfg.context, client_configuration=conf
            )
        elif cfg.host is None:
            try:
                kube_config.load_incluster_config(client_configuration=conf)
            except kube_config.ConfigException:
                kube_config.load_kube_config(context=cfg.context, client_configuration=conf)
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"kubernetes executor: no way to reach the cluster ({exc}); set kubeconfig (and "
            "context) under [executor], or run the agent inside the cluster"
        ) from exc
    if cfg.host is not None:
        conf.host = cfg.host.rstrip("/")
    return conf


def _api_message(exc: Any) -> str:
    """One line for an ApiException: status, reason, the server's message, a hint."""
    status = exc.status
    text = f"HTTP {status} {exc.reason or ''}".rstrip()
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = str(body)[:300]
        if message:
            text += f": {message}"
    if status == 403:
        text += " (the agent's service account lacks a permission: see build_agent_rbac)"
    elif status == 401:
        text += " (the agent's credentials were rejected)"
    return text


def _get(obj: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in _get(job, "status", "conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _container_status(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    statuses = _get(pod, "status", "containerStatuses") or []
    for cs in statuses:
        if isinstance(cs, dict) and cs.get("name") == CONTAINER:
            return cs
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    term = _get(_container_status(pod), "state", "terminated")
    return term if isinstance(term, dict) else None


def _waiting(pod: dict[str, Any] | None) -> list[str]:
    """``[reason, message]`` of a container still waiting (pulling, back-off), if any."""
    waiting = _get(_container_status(pod), "state", "waiting")
    if not isinstance(waiting, dict) or not waiting.get("reason"):
        return []
    return [str(waiting["reason"])] + ([str(waiting["message"])] if waiting.get("message") else [])


def _not_started(pod: dict[str, Any] | None) -> str:
    """What held a pod back, in words."""
    if pod is None:
        return (
            "no pod was created for the Job: check the namespace's quota and admission "
            "policies with `kubectl describe job`"
        )
    waiting = _waiting(pod)
    if waiting:
        return "the container is waiting: " + ": ".join(waiting)
    for cond in _get(pod, "status", "conditions") or []:
        if (
            isinstance(cond, dict)
            and cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
        ):
            why = cond.get("reason") or "not scheduled"
            return f"{why}: {cond['message']}" if cond.get("message") else str(why)
    return f"the pod is {_get(pod, 'status', 'phase') or 'Pending'}"


def _job_failure(name: str, cond: dict[str, Any], pod: dict[str, Any] | None) -> str:
    reason = cond.get("reason") or "Failed"
    text = f"the Job {name} failed ({reason})"
    if cond.get("message"):
        text += f": {cond['message']}"
    if reason == "DeadlineExceeded":
        text += " — it ran past its activeDeadlineSeconds"
    if pod is not None and _get(pod, "status", "phase") == "Pending":
        text += f"; its pod never started ({_not_started(pod)})"
    return text


def _tail(text: str) -> str:
    """The last lines of a log, less any framed result (base64 says nothing to a reader)."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        bare = line.strip()
        if bare == FRAME_BEGIN:
            inside = True
        elif FRAME_END.match(bare):
            if not inside:  # the read began inside a frame: what came before was its body
                kept = []
            inside = False
        elif bare and not inside:
            kept.append(line.rstrip())
    return " | ".join(kept[-TAIL_LINES:])[-TAIL_CHARS:]
