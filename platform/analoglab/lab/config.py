"""A lab site's configuration: ``lab.toml``, read by the lab agent and nothing else.

It names the lab, maps each frontier model id to its weights on the lab's own storage, and
chooses the executor. The hub never sees this file. Example (the demo foundry writes the first
three lines for its lab)::

    lab = "demo-lab"
    hub = "http://127.0.0.1:8750"          # or --hub
    token_file = "agent.token"             # or --token-file
    signing_key = "signing.key"            # the site's Ed25519 key, created on first use

    maps = "maps"                          # the site's residual maps (the default)

    [models."demo-frontier"]
    path = "models/demo-frontier"          # relative to this file

    [executor]
    kind = "local"                         # or "kubernetes" (see [executor.kubernetes])
    timeout_seconds = 1800
    memory_mb = 8192
    batch_tokens = 8192                    # per shared forward pass; 0: each job alone

    [agent]
    lease_seconds = 120

    [release]
    max_tensor_values = 100000

Relative paths are resolved against the folder holding the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from analoglab.errors import ConfigError

NAME = r"^[a-z0-9][a-z0-9._-]*$"
#: The site's signing key, beside lab.toml unless ``signing_key`` says otherwise.
SIGNING_KEY = "signing.key"
#: The site's residual maps (one folder per frontier), beside lab.toml unless ``maps`` says
#: otherwise; with the kubernetes executor, a folder inside the weights volume.
MAPS = "maps"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrontierWeights(_Strict):
    """Where one frontier's weights live on the lab's storage."""

    path: Path = Field(
        description="weights folder (local executor: relative to lab.toml) or, with the "
        "kubernetes executor, its path inside the weights volume"
    )
    sha256: str | None = Field(None, description="expected weights hash, checked on load")


class LocalExecutorConfig(_Strict):
    """Runs each job in a child process on this machine, keeping the model loaded between jobs."""

    kind: Literal["local"] = "local"
    timeout_seconds: float = Field(1800, gt=0, description="wall clock per job")
    memory_mb: int = Field(16_384, gt=0, description="resident memory cap of the worker")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    warm: bool = Field(True, description="keep the worker (and its model) between jobs")
    threads: int | None = Field(None, gt=0, description="torch threads in the worker")
    batch_tokens: int = Field(
        8192,
        ge=0,
        description="tokens per shared forward pass when jobs claimed together run as one "
        "batch (evaluation, activation statistics, probes, steering); 0 runs each job alone",
    )
    env_passthrough: list[str] = Field(
        default_factory=list,
        description="extra environment variables the worker keeps (e.g. LD_LIBRARY_PATH); "
        "never put credentials here",
    )


class KubernetesExecutorConfig(_Strict):
    """Runs each job as a ``batch/v1`` Job in the lab's cluster."""

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str = "analoglab"
    image: str = Field(description="the lab worker image (analoglab[lab] installed)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu limit per job")
    cpu: str = "2"
    memory: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    weights_claim: str = Field(description="PersistentVolumeClaim holding the frontier weights")
    weights_mount: str = "/weights"
    run_as_user: int = Field(1000, gt=0)
    timeout_seconds: float = Field(1800, gt=0, description="wall clock per job, start included")
    start_timeout_seconds: float = Field(600, gt=0, description="for the pod to start running")
    poll_seconds: float = Field(2.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets for pulling the image from a private registry"
    )
    ttl_seconds_after_finished: int = Field(
        3600, ge=60, description="the cluster removes a finished Job the agent could not delete"
    )
    kubeconfig: Path | None = Field(None, description="unset: in-cluster, then ~/.kube/config")
    context: str | None = None
    host: str | None = Field(None, description="API server URL (tests, unusual setups)")


ExecutorConfig = Annotated[
    LocalExecutorConfig | KubernetesExecutorConfig, Field(discriminator="kind")
]


class AgentConfig(_Strict):
    """The agent's dealings with the hub."""

    lease_seconds: int = Field(120, ge=5, description="lease asked for at each claim/heartbeat")
    heartbeat_seconds: float = Field(30, gt=0, description="how often a running job is renewed")
    wait_seconds: float = Field(20, ge=0, le=60, description="long-poll wait per claim")
    backoff_max_seconds: float = Field(60, gt=0, description="longest wait between retries")
    batch: int = Field(4, ge=1, description="jobs claimed ahead for one warm worker")

    @model_validator(mode="after")
    def _beats_within_the_lease(self) -> AgentConfig:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most a third of "
                f"lease_seconds ({self.lease_seconds}), or leases expire between beats"
            )
        return self


class ReleaseConfig(_Strict):
    """The lab's own release checks, on top of the frontier's policy on the hub."""

    max_tensor_values: int = Field(
        100_000, gt=0, description="largest array (profile, table) a result may hold"
    )
    max_metrics: int = Field(256, gt=0, description="most scalar metrics a result may hold")
    max_bootstrap: int = Field(
        1000, gt=0, description="most bootstrap resamples a result may carry (its intervals)"
    )
    release_bootstrap: bool = Field(
        False,
        description="whether a result's bootstrap replicates leave the lab. They give the "
        "hub paired intervals for transfer checks, but the resamples follow the spec's public "
        "seed, so with as many replicates as items they give back each item's value (a "
        "prompt's logit difference, a probe's per-item answer): turn on only for frontiers "
        "whose per-item outputs may be public (the demo lab's are)",
    )


class LabConfig(_Strict):
    """Everything the lab agent needs to know about its site."""

    lab: str = Field(pattern=NAME)
    hub: str | None = None
    token_file: Path | None = None
    name: str | None = Field(None, description="the agent's name in leases (default: host:pid)")
    signing_key: Path | None = Field(
        None,
        description="the site's Ed25519 key (PEM, mode 600) that signs its results and "
        "bundles, created on first use; default: signing.key beside lab.toml",
    )
    maps: Path | None = Field(
        None,
        description="the site's residual maps between analogs and its frontiers "
        "(<maps>/<frontier>/<analog>.npz, fitted with `analoglab lab map fit`); default: maps "
        "beside lab.toml, or with the kubernetes executor the folder maps inside the weights "
        "volume. Maps stay at the lab",
    )
    models: dict[str, FrontierWeights] = Field(default_factory=dict)
    executor: ExecutorConfig = Field(default_factory=LocalExecutorConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)

    def weights(self, frontier: str) -> FrontierWeights:
        try:
            return self.models[frontier]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                f"this lab site has no weights for {frontier!r} (configured: {known}); "
                "add it under [models] in lab.toml"
            ) from None


def parse_lab_config(data: dict[str, Any], base: Path | None = None) -> LabConfig:
    """A :class:`LabConfig` from parsed TOML; relative paths resolved against ``base``."""
    try:
        cfg = LabConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "lab.toml"
        raise ConfigError(f"lab config: {where}: {first['msg']}") from exc
    if base is None:
        return cfg
    update: dict[str, Any] = {}
    if isinstance(cfg.executor, LocalExecutorConfig):
        # Weights on this machine; with Kubernetes a path is inside the weights volume.
        update["models"] = {
            k: v.model_copy(update={"path": _under(base, v.path)}) for k, v in cfg.models.items()
        }
        update["maps"] = _under(base, cfg.maps or Path(MAPS))
    else:
        update["maps"] = cfg.maps or Path(MAPS)
    if cfg.token_file is not None:
        update["token_file"] = _under(base, cfg.token_file)
    update["signing_key"] = _under(base, cfg.signing_key or Path(SIGNING_KEY))
    if isinstance(cfg.executor, KubernetesExecutorConfig) and cfg.executor.kubeconfig:
        ex = cfg.executor.model_copy(update={"kubeconfig": _under(base, cfg.executor.kubeconfig)})
        update["executor"] = ex
    return cfg.model_copy(update=update)


def _under(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def load_lab_config(path: str | Path) -> LabConfig:
    """Read ``lab.toml``; a :class:`ConfigError` naming the file and the field if it is bad."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no lab config at {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"lab config {path} cannot be read: {exc}") from exc
    try:
        return parse_lab_config(data, base=path.parent.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
