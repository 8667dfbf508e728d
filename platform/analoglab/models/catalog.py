"""The model catalog: labs, their frontier models (metadata and policy, never weights), and
the analogs in the public model store with their cards.

On disk: ``<catalog_dir>/labs/<lab>.json`` holds a :class:`Lab` with its frontier entries;
``<model_store>/<analog>/analog.json`` holds each analog's card. This module reads and writes
metadata only and never imports torch, so the hub-side services can use it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analoglab.config import Settings, get_settings
from analoglab.errors import CorruptModelError, ModelNotFoundError
from analoglab.files import atomic_write
from analoglab.models.card import NAME_PATTERN, AnalogCard, Architecture, read_card
from analoglab.signing import SignatureError, parse_public_key

DEFAULT_METHODS = [
    "activation_stats",
    "steering",
    "probe",
    "ablation",
    "patching",
    "evaluation",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FrontierPolicy(_Strict):
    """What a lab lets outside researchers run on one frontier model through the queue."""

    allowed_methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    max_prompts: int = Field(512, description="prompts (or pairs) per experiment")
    max_tokens_per_prompt: int = Field(256, description="tokens per prompt")
    max_output_bytes: int = Field(1_000_000, description="size cap of a released result")
    allow_samples: bool = Field(False, description="whether generated text may be released")
    daily_quota_per_user: int = Field(20, description="submissions per user per day")
    human_review: bool = Field(True, description="a reviewer approves each job")
    human_release: bool = Field(False, description="a reviewer releases each result")
    share_weights: dict[
        Annotated[str, Field(min_length=1, max_length=200)],
        Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)],
    ] = Field(
        default_factory=dict,
        max_length=64,
        description="fair share: a hub group's weight in the claim order (a member's weight "
        "is the largest of their groups', 1 for everyone else)",
    )
    max_bootstrap: int = Field(
        1000,
        ge=0,
        description="bootstrap resamples a job may ask for (the lab's release checks' cap)",
    )
    allow_self_review: bool = Field(
        False,
        description="whether a reviewer may review or release a job they submitted themselves "
        "(separation of duties: off unless the lab turns it on)",
    )


#: Bounds on a published layout: how long a reason may be, how many sites and blocks it names.
MAX_LAYOUT_REASON = 500
MAX_LAYOUT_SITES = 16
MAX_LAYOUT_BLOCKS = 4096
SiteName = Annotated[str, Field(max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)?$")]


def _bounded(text: str, limit: int = MAX_LAYOUT_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SiteRefusal(_Strict):
    """A hook site the frontier's verified layout does not offer at some blocks, and why."""

    site: SiteName
    blocks: list[Annotated[int, Field(ge=0)]] = Field(
        max_length=MAX_LAYOUT_BLOCKS, description="the blocks refused"
    )
    reason: str = Field("", max_length=MAX_LAYOUT_REASON)


class FrontierLayout(_Strict):
    """What the lab's layout self-test found on its frontier (no weights, no values): the hook
    sites offered at every block, and those refused somewhere with the reason. Published so the
    queue can refuse a job needing a site the frontier cannot run, without loading the model."""

    model_type: str = Field(max_length=100)
    config_hash: str = Field("", max_length=64)
    n_layers: int = Field(ge=0, le=MAX_LAYOUT_BLOCKS)
    refused: str = Field(
        "", max_length=MAX_LAYOUT_REASON, description="why the whole layout is refused, if it is"
    )
    supported: list[SiteName] = Field(
        default_factory=list,
        max_length=MAX_LAYOUT_SITES,
        description="sites offered at every block",
    )
    refusals: list[SiteRefusal] = Field(default_factory=list, max_length=MAX_LAYOUT_SITES)

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> FrontierLayout:
        """From ``LayoutReport.to_dict()`` (this module never imports torch)."""
        n = int(report["n_layers"])
        refused = _bounded(str(report.get("refused", "")))
        supported: list[str] = []
        refusals: list[SiteRefusal] = []
        for site, support in report["sites"].items():
            offered = set(support["blocks"])
            if n and len(offered) == n and not refused:
                supported.append(site)
                continue
            missing = [b for b in range(n) if b not in offered]
            reason = _bounded(str(support.get("reason") or refused or "not offered"))
            refusals.append(SiteRefusal(site=site, blocks=missing, reason=reason))
        return cls(
            model_type=_bounded(str(report["model_type"]), 100),
            config_hash=str(report.get("config_hash", ""))[:64],
            n_layers=n,
            refused=refused,
            supported=supported,
            refusals=refusals,
        )

    def refused_at(self, site: str, blocks: list[int]) -> tuple[list[int], str]:
        """Which of ``blocks`` refuse ``site``, and why (``([], "")`` when all offer it).

        Only what the layout says: a site it names nowhere is not refused.
        """
        if self.refused:
            return list(blocks), self.refused
        for refusal in self.refusals:
            if refusal.site == site:
                hit = [b for b in blocks if b in set(refusal.blocks)]
                return hit, refusal.reason if hit else ""
        return [], ""


class FrontierModel(_Strict):
    """A frontier model as the hub knows it: metadata, published capabilities and policy."""

    id: str = Field(pattern=NAME_PATTERN)
    lab: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    architecture: Architecture
    parameters: int
    trained: dt.date
    capabilities: dict[str, float] = Field(
        default_factory=dict, description="task accuracies the lab publishes"
    )
    policy: FrontierPolicy = Field(default_factory=FrontierPolicy)
    layout: FrontierLayout | None = Field(
        None,
        description="the hook sites the lab's verified layout offers (absent in catalogs "
        "written before layouts were published: then vetting says nothing about sites)",
    )


class Lab(_Strict):
    id: str = Field(pattern=NAME_PATTERN)
    name: str
    description: str = ""
    url: str | None = None
    public_key: str | None = Field(
        None,
        description="the lab site's Ed25519 public key, 'ed25519:<base64>': what the lab's "
        "signed results and analog bundles are checked against",
    )
    frontiers: list[FrontierModel] = Field(default_factory=list)

    @field_validator("public_key")
    @classmethod
    def _a_public_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_public_key(value)
            except SignatureError as exc:
                raise ValueError(str(exc)) from None
        return value


@dataclass(frozen=True)
class AnalogEntry:
    card: AnalogCard
    path: Path

    @property
    def name(self) -> str:
        return self.card.name


@dataclass(frozen=True)
class Problem:
    """Something in the store or catalog that could not be read; shown, never fatal."""

    path: Path
    reason: str


@dataclass
class Catalog:
    """Everything the hub knows about models, read from the data folder."""

    labs: list[Lab] = field(default_factory=list)
    analogs: list[AnalogEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings | None = None) -> Catalog:
        settings = settings or get_settings()
        cat = cls()
        labs_dir = settings.catalog_path / "labs"
        for path in sorted(labs_dir.glob("*.json")) if labs_dir.is_dir() else []:
            try:
                cat.labs.append(Lab.model_validate(json.loads(path.read_text())))
            except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
                cat.problems.append(Problem(path, str(exc).splitlines()[0]))
        store = settings.models_path
        for folder in sorted(store.iterdir()) if store.is_dir() else []:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                cat.analogs.append(AnalogEntry(read_card(folder), folder))
            except CorruptModelError as exc:
                cat.problems.append(Problem(folder, str(exc)))
        return cat

    def frontiers(self) -> list[FrontierModel]:
        return [f for lab in self.labs for f in lab.frontiers]

    def analogs_of(self, frontier_id: str) -> list[AnalogEntry]:
        return [a for a in self.analogs if a.card.frontier == frontier_id]

    def analog(self, name: str) -> AnalogEntry:
        for entry in self.analogs:
            if entry.name == name:
                return entry
        raise ModelNotFoundError(
            f"no analog named {name!r} in the model store"
            + self._known("analogs", [a.name for a in self.analogs])
        )

    def frontier(self, frontier_id: str) -> FrontierModel:
        for f in self.frontiers():
            if f.id == frontier_id:
                return f
        raise ModelNotFoundError(
            f"no frontier model {frontier_id!r} in the catalog"
            + self._known("frontier models", [f.id for f in self.frontiers()])
        )

    def lab(self, lab_id: str) -> Lab:
        for lab in self.labs:
            if lab.id == lab_id:
                return lab
        raise ModelNotFoundError(
            f"no lab {lab_id!r} in the catalog" + self._known("labs", [x.id for x in self.labs])
        )

    def resolve(self, name: str) -> AnalogEntry | FrontierModel:
        """An analog or a frontier model by name, for ``models show``."""
        for entry in self.analogs:
            if entry.name == name:
                return entry
        for f in self.frontiers():
            if f.id == name:
                return f
        names = [a.name for a in self.analogs] + [f.id for f in self.frontiers()]
        raise ModelNotFoundError(
            f"no model named {name!r} in the catalog" + self._known("models", names)
        )

    @staticmethod
    def _known(what: str, names: list[str]) -> str:
        if not names:
            return f" (there are no {what} yet: `analoglab models build` makes the demo ones)"
        return f"; known {what}: {', '.join(sorted(names))}"


def layout_for(frontier: FrontierModel, report: Any) -> FrontierLayout:
    """The catalog entry of a lab's layout report (``LayoutReport.to_dict()``, as
    ``analoglab lab layout`` writes it) for ``frontier``, after checking it is of that model.

    Raises :class:`~analoglab.errors.CorruptModelError` with one line saying what is wrong: not
    a layout report, over the bounds, or of another architecture or depth than the catalog's.
    """
    if not isinstance(report, dict):
        raise CorruptModelError("not a layout report: expected a JSON object")
    try:
        layout = FrontierLayout.from_report(report)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the report"
        raise CorruptModelError(f"not a layout report ({where}: {first['msg']})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CorruptModelError(f"not a layout report ({what})") from None
    arch = frontier.architecture
    if layout.model_type != arch.model_type or layout.n_layers != arch.layers:
        raise CorruptModelError(
            f"the layout is of a {layout.n_layers}-block {layout.model_type}; {frontier.id} is a "
            f"{arch.layers}-block {arch.model_type} in the catalog: publish the layout of this "
            "frontier's weights"
        )
    return layout


def publish_layout(
    frontier_id: str, report: Any, settings: Settings | None = None
) -> FrontierModel:
    """Put a lab's layout report on its frontier's catalog entry (replacing any earlier one),
    so the queue's vetting refuses jobs needing a site the frontier cannot run."""
    settings = settings or get_settings()
    catalog = Catalog.load(settings)
    frontier = catalog.frontier(frontier_id)
    layout = layout_for(frontier, report)
    lab = catalog.lab(frontier.lab)
    frontiers = [
        f.model_copy(update={"layout": layout}) if f.id == frontier_id else f for f in lab.frontiers
    ]
    save_lab(lab.model_copy(update={"frontiers": frontiers}), settings)
    return next(f for f in frontiers if f.id == frontier_id)


def save_lab(lab: Lab, settings: Settings | None = None) -> Path:
    """Write a lab's catalog entry atomically."""
    settings = settings or get_settings()
    path = settings.catalog_path / "labs" / f"{lab.id}.json"
    atomic_write(path, lab.model_dump_json(indent=2) + "\n")
    return path
