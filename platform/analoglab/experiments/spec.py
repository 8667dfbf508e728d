"""ExperimentSpec: what an experiment does, as declarative, versioned, JSON-serialisable data.

A spec names one **method** (the discriminator), its **data** (inline and bounded, or a named
foundry task set), and the **layers** it looks at (by relative depth, so one spec runs on a
2-layer analog and a 48-layer frontier, or by index). The same pydantic models validate a
spec in the queue (which imports no torch) and drive the runner. A spec meant for a frontier
must be self-contained: :func:`resolve_task_sets` inlines every task-set reference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from analoglab.errors import AnalogLabError
from analoglab.experiments.result import canonical_json
from analoglab.experiments.uncertainty import DEFAULT_RESAMPLES, MAX_RESAMPLES, MIN_RESAMPLES

SPEC_VERSION: Literal[1] = 1
MAX_ITEMS = 4096
MAX_TEXT = 2000


class SpecError(AnalogLabError):
    """A spec that does not validate; the message names each offending field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
Answer = Annotated[str, Field(min_length=1, max_length=100)]

# -- data -------------------------------------------------------------------------------------


class Choice(_Model):
    """After ``prompt`` a capable model prefers ``target`` to ``foil`` (first tokens compared)."""

    prompt: Text
    target: Answer
    foil: Answer
    label: str | None = None


class Pair(_Model):
    """Two texts alike but for one feature (positive / negative)."""

    positive: Text
    negative: Text


class LabelledText(_Model):
    text: Text
    label: int = Field(ge=0, le=63)


class PatchPair(_Model):
    """A clean and a corrupted prompt of equal token length, and the answer telling them apart."""

    clean: Text
    corrupt: Text
    target: Answer
    foil: Answer


class Prompts(_Model):
    kind: Literal["prompts"] = "prompts"
    prompts: list[Text] = Field(min_length=1, max_length=MAX_ITEMS)


class Choices(_Model):
    kind: Literal["choices"] = "choices"
    items: list[Choice] = Field(min_length=1, max_length=MAX_ITEMS)


class Pairs(_Model):
    kind: Literal["pairs"] = "pairs"
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_ITEMS)


class Labelled(_Model):
    kind: Literal["labelled"] = "labelled"
    items: list[LabelledText] = Field(min_length=4, max_length=MAX_ITEMS)


class PatchPairs(_Model):
    kind: Literal["patch_pairs"] = "patch_pairs"
    items: list[PatchPair] = Field(min_length=1, max_length=MAX_ITEMS)


TASK_SETS = ("sentiment", "sentiment_pairs", "ioi", "ioi_patch", "facts", "truth", "neutral")


class TaskSetRef(_Model):
    """A named foundry task set, drawn with ``n`` items and ``seed``."""

    kind: Literal["task_set"] = "task_set"
    name: Literal["sentiment", "sentiment_pairs", "ioi", "ioi_patch", "facts", "truth", "neutral"]
    n: int = Field(200, ge=1, le=MAX_ITEMS)
    seed: int = 12345


Data = Annotated[
    Prompts | Choices | Pairs | Labelled | PatchPairs | TaskSetRef, Field(discriminator="kind")
]


class Layers(_Model):
    """Which blocks: relative depths in [0, 1], or block indices (negative counts from the
    end), or every block when neither is given."""

    depths: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(None, max_length=256)
    indices: list[int] | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _one_way(self) -> Layers:
        if self.depths is not None and self.indices is not None:
            raise ValueError("give layers as depths or as indices, not both")
        return self


class Bootstrap(_Model):
    """How a result's uncertainty is estimated: ``resamples`` bootstrap draws of the items
    (with the method's random parts: probe splits, random controls), seeded by ``seed``
    (see ``analoglab.experiments.uncertainty``). A lab's release checks may cap
    ``resamples`` lower than the bound here."""

    resamples: int = Field(DEFAULT_RESAMPLES, ge=MIN_RESAMPLES, le=MAX_RESAMPLES)
    seed: int = 0


# -- methods ----------------------------------------------------------------------------------


#: Fields added after specs were first hashed: at their defaults they are left out of a
#: spec's dict, so a spec written before them keeps its hash (and its transfer checks, and
#: the queue jobs made of it).
_LATER_FIELDS: dict[str, Any] = {
    "bootstrap": Bootstrap().model_dump(),
    "random_draws": 4,
    "splits": 4,
}


class _Common(_Model):
    spec_version: Literal[1] = SPEC_VERSION
    name: str | None = Field(None, max_length=200)
    description: str = Field("", max_length=4000)
    seed: int = 0
    bootstrap: Bootstrap = Bootstrap()
    batch_size: int = Field(32, ge=1, le=1024)
    max_tokens_per_prompt: int = Field(128, ge=1, le=4096)

    @model_serializer(mode="wrap")
    def _without_later_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key, default in _LATER_FIELDS.items():
                if key in data and data[key] == default:
                    del data[key]
        return data


class ActivationStatsSpec(_Common):
    """Per-layer norms, mean direction and PCA explained variance over a prompt set."""

    method: Literal["activation_stats"] = "activation_stats"
    data: Data
    layers: Layers = Layers()
    position: Literal["last", "mean", "all"] = "last"
    pca_components: int = Field(8, ge=1, le=64)


class SteeringSpec(_Common):
    """Contrastive activation addition swept over layers and scales."""

    method: Literal["steering"] = "steering"
    contrast: Data = Field(description="pairs (or a pairs task set) the vector is built from")
    evaluate: Data = Field(description="prompts (or choices, whose prompts are used) to steer")
    target: Answer = Field(description="the behaviour: steering toward target, away from foil")
    foil: Answer
    neutral: Data | None = Field(None, description="prompts for the side-effect KL")
    layers: Layers = Layers(depths=[0.0, 0.25, 0.5, 0.75, 1.0])
    scales: list[Annotated[float, Field(ge=-64, le=64)]] = Field(
        default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0], min_length=1, max_length=33
    )
    position: Literal["all", "last"] = "all"
    control: Literal["none", "random_vector"] = Field(
        "none", description="random_vector: a random direction of the same norm (a control)"
    )
    random_draws: int = Field(
        4,
        ge=1,
        le=16,
        description="with random_vector: how many random directions are drawn, in "
        "antithetic pairs (a direction, then its opposite); the effect is their mean, and "
        "the bootstrap's replicates go through all of them",
    )


class ProbeSpec(_Common):
    """A linear probe per layer; held-out accuracy against relative depth."""

    method: Literal["probe"] = "probe"
    data: Data
    layers: Layers = Layers()
    position: Literal["last", "mean"] = "last"
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    l2: float = Field(1e-2, ge=0.0, le=100.0)
    control: Literal["none", "shuffled_labels"] = "none"
    splits: int = Field(
        4,
        ge=1,
        le=16,
        description="train/test splits fitted (the first, seeded by seed, gives the point "
        "estimate; the bootstrap's replicates go through all of them)",
    )


class AblationSpec(_Common):
    """Per-head and per-MLP effect of ablation on a logit-difference metric."""

    method: Literal["ablation"] = "ablation"
    data: Data
    layers: Layers = Layers()
    components: Literal["heads", "mlp", "both"] = "both"
    ablation: Literal["zero", "mean"] = "mean"


class PatchingSpec(_Common):
    """Residual-stream activation patching clean → corrupt: normalised recovery per layer."""

    method: Literal["patching"] = "patching"
    data: Data
    layers: Layers = Layers()
    per_position: bool = False


class Samples(_Model):
    n: int = Field(4, ge=1, le=16)
    max_new_tokens: int = Field(16, ge=1, le=64)


class EvaluationSpec(_Common):
    """Task accuracy and logit difference; generated samples only when asked, bounded."""

    method: Literal["evaluation"] = "evaluation"
    data: Data
    samples: Samples | None = None


class FidelitySpec(_Common):
    """Analog vs frontier on the same inputs (needs both models where it runs)."""

    method: Literal["fidelity"] = "fidelity"
    data: Data
    layers: Layers = Layers(depths=[0.0, 0.25, 0.5, 0.75, 1.0])
    behaviour: Data | None = None


#: The most numbers an inline artifact may hold (a vector of the analog's width).
MAX_ARTIFACT_VALUES = 16384
#: The equal-norm random directions each mapped method draws as its control (torch-free here,
#: so the methods, the transfer comparison and the queue's cost estimate share one number).
MAPPED_RANDOM_DRAWS = 4
#: The longest provenance an artifact may carry (``Artifact.source``).
MAX_SOURCE_CHARS = 300


class Artifact(_Model):
    """A finding on an analog, carried inline: a steering vector (added to the residual
    stream) or a probe direction (read as ``direction · x``), of the analog's ``width``, found
    at relative ``depth`` of the analog ``analog``."""

    kind: Literal["steering_vector", "probe_direction"]
    analog: str = Field(min_length=1, max_length=200, description="the analog it was found on")
    depth: float = Field(ge=0.0, le=1.0)
    width: int = Field(ge=1, le=MAX_ARTIFACT_VALUES)
    values: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1, max_length=MAX_ARTIFACT_VALUES
    )
    analog_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="the sha256 of the analog's weights it was found on: a run refuses a "
        "residual map fitted on other analog weights (and, on the analog, other weights)",
    )
    source: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="where the artifact came from (provenance), e.g. "
        "'mlflow:runs/<run_id>/artifacts/<path>'; carried into the result with the spec",
    )

    @model_validator(mode="after")
    def _values_of_its_width(self) -> Artifact:
        if len(self.values) != self.width:
            raise ValueError(
                f"the artifact holds {len(self.values)} values, its width is {self.width}"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_unset_later_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        # added after mapped specs were first hashed: absent, they leave the hash as it was
        data = handler(self)
        if isinstance(data, dict):
            for key in ("analog_sha256", "source"):
                if key in data and data[key] is None:
                    del data[key]
        return data


#: The artifact kind each mapped method carries.
ARTIFACT_KIND = {"mapped_steering": "steering_vector", "mapped_probe": "probe_direction"}


def _check_artifact_kind(method: str, artifact: Artifact) -> None:
    expected = ARTIFACT_KIND[method]
    if artifact.kind != expected:
        raise ValueError(
            f"{method} carries a {expected}, and this artifact is a {artifact.kind}: "
            f"use {'mapped_probe' if expected == 'steering_vector' else 'mapped_steering'} "
            f"for a {artifact.kind}, or set artifact.kind to {expected!r}"
        )


class MappedSteeringSpec(_Common):
    """An analog's steering vector carried to the frontier through the lab's residual map,
    against the vector computed natively on the frontier and a random one of equal norm."""

    method: Literal["mapped_steering"] = "mapped_steering"
    artifact: Artifact
    contrast: Data = Field(description="pairs the native frontier vector and the swing use")
    evaluate: Data = Field(description="prompts (or choices, whose prompts are used) to steer")
    target: Answer
    foil: Answer
    neutral: Data | None = Field(None, description="prompts for the side-effect KL")
    scale: float = Field(4.0, ge=-64, le=64, description="how much of each vector is added")
    position: Literal["all", "last"] = "all"

    @field_validator("artifact")
    @classmethod
    def _a_steering_vector(cls, artifact: Artifact) -> Artifact:
        _check_artifact_kind("mapped_steering", artifact)
        return artifact


class MappedProbeSpec(_Common):
    """An analog's probe direction carried to the frontier through the lab's residual map,
    against a probe fitted natively on the frontier and a random direction."""

    method: Literal["mapped_probe"] = "mapped_probe"
    artifact: Artifact
    data: Data
    position: Literal["last", "mean"] = "last"
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    l2: float = Field(1e-2, ge=0.0, le=100.0)

    @field_validator("artifact")
    @classmethod
    def _a_probe_direction(cls, artifact: Artifact) -> Artifact:
        _check_artifact_kind("mapped_probe", artifact)
        return artifact


ExperimentSpec = Annotated[
    ActivationStatsSpec
    | SteeringSpec
    | ProbeSpec
    | AblationSpec
    | PatchingSpec
    | EvaluationSpec
    | FidelitySpec
    | MappedSteeringSpec
    | MappedProbeSpec,
    Field(discriminator="method"),
]
AnySpec = (
    ActivationStatsSpec
    | SteeringSpec
    | ProbeSpec
    | AblationSpec
    | PatchingSpec
    | EvaluationSpec
    | FidelitySpec
    | MappedSteeringSpec
    | MappedProbeSpec
)
METHODS = (
    "activation_stats",
    "steering",
    "probe",
    "ablation",
    "patching",
    "evaluation",
    "fidelity",
    "mapped_steering",
    "mapped_probe",
)

_ADAPTER: TypeAdapter[AnySpec] = TypeAdapter(ExperimentSpec)


_DATA_FIELDS = ("data", "contrast", "evaluate", "neutral", "behaviour")
_DATA_KINDS = ("prompts", "choices", "pairs", "labelled", "patch_pairs", "task_set")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """The field's path without the union tags pydantic puts in (method and data kind)."""
    parts = list(loc[1:] if loc and loc[0] in METHODS else loc)
    out: list[str] = []
    for i, p in enumerate(parts):
        if p in _DATA_KINDS and i > 0 and parts[i - 1] in _DATA_FIELDS:
            continue
        out.append(str(p))
    return ".".join(out)


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:8]:
        parts.append(f"{_field_path(e['loc']) or 'spec'}: {e['msg']}")
    more = len(exc.errors()) - 8
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_spec(data: dict[str, Any] | str) -> AnySpec:
    """Validate a spec given as a dict or a JSON string; errors name each field."""
    try:
        if isinstance(data, str):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SpecError(f"invalid experiment spec: {_describe(exc)}") from exc


def load_spec(path: str | Path) -> AnySpec:
    """Read a spec from a YAML or JSON file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(
            f"spec file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if not isinstance(data, dict):
        raise SpecError(f"spec file {path} must hold a mapping with a 'method' key")
    return parse_spec(data)


def spec_to_dict(spec: AnySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def spec_hash(spec: AnySpec) -> str:
    """sha256 of the spec's canonical JSON: the same experiment, the same hash."""
    return hashlib.sha256(canonical_json(spec_to_dict(spec)).encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every spec (what ``analoglab spec schema`` prints)."""
    schema = _ADAPTER.json_schema()
    schema["title"] = "ExperimentSpec"
    schema["$id"] = f"https://analoglab.dev/schemas/experiment-spec-v{SPEC_VERSION}.json"
    return schema


def task_set_refs(spec: AnySpec) -> list[TaskSetRef]:
    return [v for v in _data_fields(spec).values() if isinstance(v, TaskSetRef)]


def is_self_contained(spec: AnySpec) -> bool:
    return not task_set_refs(spec)


def _data_fields(spec: AnySpec) -> dict[str, Any]:
    return {
        k: getattr(spec, k)
        for k in ("data", "contrast", "evaluate", "neutral", "behaviour")
        if getattr(spec, k, None) is not None
    }


def inline_task_set(ref: TaskSetRef) -> Prompts | Choices | Pairs | Labelled | PatchPairs:
    """The data of a task-set reference, inline (pure Python: no model needed)."""
    from analoglab.foundry import tasks as foundry_tasks
    from analoglab.foundry.tasks import ChoiceItem, ContrastPair, PatchItem

    ts = foundry_tasks.task_set(ref.name, ref.n, ref.seed)
    if ts.kind == "pairs":
        return Pairs(
            pairs=[
                Pair(positive=p.positive, negative=p.negative)
                for p in ts.items
                if isinstance(p, ContrastPair)
            ]
        )
    if ts.kind == "prompts":
        return Prompts(prompts=[str(p) for p in ts.items])
    if ts.kind == "patch_pairs":
        return PatchPairs(
            items=[
                PatchPair(clean=p.clean, corrupt=p.corrupt, target=p.target, foil=p.foil)
                for p in ts.items
                if isinstance(p, PatchItem)
            ]
        )
    return Choices(
        items=[
            Choice(prompt=i.prompt, target=i.target, foil=i.foil, label=i.label)
            for i in ts.items
            if isinstance(i, ChoiceItem)
        ]
    )


def resolve_task_sets(spec: AnySpec) -> AnySpec:
    """The same spec with every task-set reference replaced by its data (self-contained)."""
    updates = {
        k: inline_task_set(v) for k, v in _data_fields(spec).items() if isinstance(v, TaskSetRef)
    }
    return spec.model_copy(update=updates) if updates else spec
