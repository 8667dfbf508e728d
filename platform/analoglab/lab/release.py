"""Release checks: what a result must satisfy before it leaves the lab.

The agent runs :func:`checked_release` on every result before posting it to the hub. A result
that fails any check is *withheld* with every reason listed (it stays on the lab site; the hub
only learns why), one that passes is posted and then released automatically or, where the
frontier's policy asks for human release, waits in ``awaiting_release``.

The checks are :func:`analoglab.experiments.result.result_problems` (the hub runs the same on
every posted result) with the lab's own caps on top: ``max_tensor_values`` (results are
aggregates; a large array is how weights or activations would leak), ``max_metrics`` and
``max_bootstrap`` (the most bootstrap resamples a result may carry).

Before the checks, :func:`for_release` drops a result's bootstrap replicates unless the lab's
``release_bootstrap`` is on: they are drawn with the spec's public seed, so anyone can rebuild
the resample weights and, with as many replicates as items, solve for each item's value — a
per-item disclosure the release checks exist to prevent. Without them the hub still compares
the point estimates; the transfer report then says it has no interval.

**Mapped results** (``mapped_steering``, ``mapped_probe``) ran through the site's residual map,
which stays at the lab. What they may carry is held tighter (:func:`mapped_problems`): scalar
metrics only (no profile, table or generated text), at most :data:`MAPPED_MAX_METRICS` of
them, and an artifact ``source`` no longer than :data:`MAX_SOURCE_CHARS`; the lab's
``max_metrics`` would otherwise let a result carry hundreds of values (a mapped vector, rows of
the map), and no count of scalars this small can hold a map's matrix (``d_analog × d_frontier``
values).

A result that leaves the lab is signed with the lab site's Ed25519 key (:func:`sign_result`:
the signature is over the result's canonical JSON, the bytes the hub hashes); anyone holding
the lab's public key from the catalog checks a released result with :func:`verify_result`
(``analoglab lab verify-result``), without trusting the hub's database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from analoglab import signing
from analoglab.experiments.result import ExperimentResult, canonical_json, result_problems
from analoglab.lab.config import ReleaseConfig
from analoglab.models.catalog import FrontierPolicy

#: The methods whose run went through the lab's residual map.
MAPPED_METHODS = frozenset({"mapped_steering", "mapped_probe"})
#: The most metrics a mapped result may hold (they report about a dozen).
MAPPED_MAX_METRICS = 32
#: The longest artifact provenance (``source``) a result may echo.
MAX_SOURCE_CHARS = 300


def for_release(result: dict[str, Any], config: ReleaseConfig | None = None) -> dict[str, Any]:
    """``result`` as it may leave the lab: without bootstrap replicates unless the lab's
    ``release_bootstrap`` lets them go (see the module docstring)."""
    config = config or ReleaseConfig()
    if config.release_bootstrap or not result.get("bootstrap"):
        return result
    return {**result, "bootstrap": None}


@dataclass(frozen=True)
class Checked:
    """A result that passed the release checks, in the form that leaves the lab: ``result``
    is what the hub stores (an :class:`ExperimentResult` as JSON, its defaults filled in) and
    ``canonical`` that form's canonical JSON, the bytes the size cap measures, the hub hashes
    and the lab's signature covers (:func:`sign_checked`)."""

    result: dict[str, Any]
    canonical: bytes


def checked_release(
    result: dict[str, Any],
    *,
    spec: dict[str, Any],
    spec_hash: str,
    policy: FrontierPolicy,
    config: ReleaseConfig | None = None,
) -> Checked | list[str]:
    """``result`` as it may leave the lab (:class:`Checked`), or every reason it may not
    (a non-empty list). The result is read and encoded once for all the checks."""
    config = config or ReleaseConfig()
    try:
        parsed = ExperimentResult.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        return [f"schema: not an ExperimentResult ({where}: {first['msg']})"]
    normal, canonical = _stored_form(parsed)
    problems = result_problems(
        parsed,
        spec=spec,
        spec_hash=spec_hash,
        size=len(canonical),
        max_bytes=policy.max_output_bytes,
        allow_samples=policy.allow_samples,
        max_tensor_values=config.max_tensor_values,
        max_metrics=config.max_metrics,
        max_bootstrap=config.max_bootstrap,
    ) + mapped_problems(parsed)
    return problems or Checked(normal, canonical)


def mapped_problems(parsed: ExperimentResult) -> list[str]:
    """The extra checks of a result that went through the lab's residual map (module
    docstring); names from the result are never quoted, only counts."""
    if parsed.method not in MAPPED_METHODS:
        return []
    problems: list[str] = []
    arrays = len(parsed.profiles) + len(parsed.tables)
    if arrays:
        problems.append(
            f"mapped: the result holds {arrays} profile(s)/table(s); a mapped result holds "
            "scalar metrics only (nothing of the lab's map may leave)"
        )
    if len(parsed.metrics) > MAPPED_MAX_METRICS:
        problems.append(
            f"mapped: {len(parsed.metrics)} metrics, over the {MAPPED_MAX_METRICS} a mapped "
            "result may hold"
        )
    if parsed.samples:
        problems.append(f"mapped: the result holds {len(parsed.samples)} generated text(s)")
    artifact = (parsed.spec or {}).get("artifact")
    source = artifact.get("source") if isinstance(artifact, dict) else None
    if isinstance(source, str) and len(source) > MAX_SOURCE_CHARS:
        problems.append(
            f"mapped: the artifact's source is {len(source)} characters, over {MAX_SOURCE_CHARS}"
        )
    return problems


@dataclass(frozen=True)
class ResultSignature:
    """A lab's signature over one result, and the id of the key that made it."""

    signature: str
    key_id: str


def _stored_form(parsed: ExperimentResult) -> tuple[dict[str, Any], bytes]:
    """A result as the hub stores it (defaults filled in) and that form's canonical JSON: the
    bytes the hub measures and hashes, and the lab's signature covers."""
    normal = parsed.model_dump(mode="json")
    return normal, canonical_json(normal).encode()


def signed_bytes(result: dict[str, Any]) -> bytes:
    """What a result's signature covers (and the hub measures against the size cap): its
    canonical JSON, as the hub stores and hashes it."""
    return _stored_form(ExperimentResult.model_validate(result))[1]


def sign_result(key: Ed25519PrivateKey, result: dict[str, Any]) -> ResultSignature:
    """The lab's signature over ``result``."""
    return ResultSignature(signing.sign(key, signed_bytes(result)), signing.key_id(key))


def sign_checked(key: Ed25519PrivateKey, checked: Checked) -> ResultSignature:
    """The lab's signature over a checked result: :func:`sign_result` of ``checked.result``,
    over the canonical bytes the checks made (not encoded again)."""
    return ResultSignature(signing.sign(key, checked.canonical), signing.key_id(key))


def verify_result(result: dict[str, Any], signature: str | None, public_key: str) -> str:
    """Check a result's signature against the lab's public key; the key id that signed it.

    :class:`~analoglab.signing.SignatureError` says why it does not hold (unsigned, altered,
    or signed by another key)."""
    if not signature:
        raise signing.SignatureError("the result carries no signature")
    try:
        data = signed_bytes(result)
    except ValidationError as exc:
        raise signing.SignatureError(f"not an ExperimentResult: {exc.errors()[0]['msg']}") from None
    signing.verify(public_key, data, signature)
    return signing.key_id(public_key)


def verify_result_file(path: Path, public_key: str) -> str:
    """Check a saved ``GET /api/jobs/{id}/result`` answer (result, signature); the key id."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise signing.SignatureError(f"no file at {path}") from None
    except (OSError, ValueError) as exc:
        raise signing.SignatureError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("result"), dict):
        raise signing.SignatureError(
            f"{path} holds no result: save the answer of GET /api/jobs/<id>/result"
        )
    return verify_result(doc["result"], doc.get("signature"), public_key)
