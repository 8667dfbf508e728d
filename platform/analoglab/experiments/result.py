"""ExperimentResult: what running a spec on one model produced — small by design.

A result holds aggregates only (scalar metrics, per-layer profiles, small tables, a few
bounded samples), never weights or whole activation tensors, and records what produced it:
the spec and its hash, the model's identity (name and weights hash), library versions,
device and timings, and its own size in bytes. It imports no torch (the queue reads results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESULT_VERSION: Literal[1] = 1


class ModelIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    weights_sha256: str
    model_type: str
    layers: int
    hidden_size: int
    parameters: int


class LayerProfile(BaseModel):
    """One number per block, with the block's relative depth (what transfer compares)."""

    model_config = ConfigDict(extra="forbid")

    indices: list[int]
    depths: list[float]
    values: list[float]

    def peak_depth(self, absolute: bool = True) -> float:
        vals = [abs(v) for v in self.values] if absolute else self.values
        return self.depths[max(range(len(vals)), key=vals.__getitem__)]


class ExperimentResult(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    result_version: Literal[1] = RESULT_VERSION
    method: str
    spec_hash: str
    spec: dict[str, Any]
    model: ModelIdentity
    device: str
    versions: dict[str, str]
    timings: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    profiles: dict[str, LayerProfile] = Field(default_factory=dict)
    tables: dict[str, list[list[float]]] = Field(default_factory=dict)
    samples: list[str] = Field(default_factory=list)
    size_bytes: int = 0

    def with_size(self) -> ExperimentResult:
        """A copy whose ``size_bytes`` is the size of its own JSON (a fixed point)."""
        res = self.model_copy(update={"size_bytes": 0})
        for _ in range(3):
            size = len(res.model_dump_json().encode())
            if size == res.size_bytes:
                break
            res = res.model_copy(update={"size_bytes": size})
        return res

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExperimentResult:
        return cls.model_validate(json.loads(Path(path).read_text()))
