"""``analoglab doctor``: is this machine ready? One check per line, each ok, warn or fail.

Checks are plain functions returning :class:`Check`; a failed *required* check makes the
command exit non-zero. What a check says never shows a secret: every URI in it is masked
(:func:`analoglab.config.redact_text`: ``postgresql://user:***@host/db``).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from analoglab.config import Settings, mask_uri, redact_text
from analoglab.errors import AnalogLabError

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check(
        "python",
        "ok" if ok else "fail",
        f"{v.major}.{v.minor}.{v.micro}" + ("" if ok else " (Analog Lab needs 3.11 or newer)"),
    )


def check_torch() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        return [
            Check("torch", "fail", "not installed: pip install 'analoglab[notebook]'"),
            Check("gpu", "warn", "unknown (torch missing)", required=False),
        ]
    import torch

    from analoglab.models.loading import best_device

    device = best_device("auto")
    checks = [Check("torch", "ok", f"{torch.__version__}, models run on {device}")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.append(Check("gpu", "ok", names, required=False))
    else:
        checks.append(Check("gpu", "ok", "none: CPU only (fine for analogs)", required=False))
    return checks


def check_transformers() -> Check:
    if importlib.util.find_spec("transformers") is None:
        return Check("transformers", "fail", "not installed: pip install 'analoglab[notebook]'")
    from importlib.metadata import version

    return Check("transformers", "ok", version("transformers"))


def check_data_folder(settings: Settings) -> Check:
    try:
        settings.ensure_folders()
    except AnalogLabError as exc:
        return Check("data folder", "fail", str(exc))
    return Check("data folder", "ok", f"{settings.home} (writable)")


def check_models(settings: Settings) -> Check:
    from analoglab.models.catalog import Catalog

    cat = Catalog.load(settings)
    detail = (
        f"{len(cat.analogs)} analog(s), {len(cat.frontiers())} frontier model(s) in the catalog"
    )
    if cat.problems:
        return Check(
            "models",
            "warn",
            detail
            + f"; {len(cat.problems)} unreadable: "
            + "; ".join(p.reason for p in cat.problems[:3]),
            required=False,
        )
    if not cat.analogs:
        return Check("models", "warn", detail + " (run `analoglab models build`)", required=False)
    return Check("models", "ok", detail, required=False)


def check_service(name: str, url: str | None, health_path: str) -> Check | None:
    """A configured service must answer; an unconfigured one is not checked."""
    if not url:
        return None
    shown = mask_uri(url)
    if not url.startswith(("http://", "https://")):
        return Check(name, "ok", f"{shown} (local store, no server)")
    import httpx

    try:
        resp = httpx.get(url.rstrip("/") + health_path, timeout=3.0)
    except httpx.HTTPError as exc:
        return Check(name, "fail", f"{shown} is not reachable: {exc}")
    if resp.status_code >= 500:
        return Check(name, "fail", f"{shown} answered {resp.status_code}")
    return Check(name, "ok", f"{shown} answered {resp.status_code}")


def run_checks(settings: Settings) -> list[Check]:
    checks = [check_python(), *check_torch(), check_transformers(), check_data_folder(settings)]
    if checks[-1].status == "ok":
        checks.append(check_models(settings))
    for c in (
        check_service("queue", settings.queue_url, "/health"),
        check_service("mlflow", settings.mlflow_tracking_uri, "/health"),
    ):
        if c is not None:
            checks.append(c)
    return [replace(c, detail=redact_text(c.detail)) for c in checks]


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" and c.required for c in checks)
