"""Residual maps: an affine map between an analog's and its frontier's residual streams.

At each relative depth ``d`` the analog's block ``i_a = block_at_depth(d, L_a)`` and the
frontier's ``i_f = block_at_depth(d, L_f)`` read the same tokens (an analog shares its
frontier's tokenizer). Over every real token of a corpus, with ``X`` the analog's
``hook_resid_post`` rows ``[n, d_a]`` and ``Y`` the frontier's ``[n, d_f]``, the map is the
ridge least-squares fit on standardised inputs

    Y ≈ Z W_z + b,   Z = (X − x̄) / s,   W_z = (ZᵀZ + λ I)⁻¹ ZᵀYc,   W = W_z / s,
    b = ȳ − x̄ W

(``s`` the per-dimension standard deviation on the fitting tokens; ``λ = l2 · n``, so that
``l2`` is the ridge strength per token in units of each input dimension's variance: every
direction of the analog's stream is shrunk alike, not only the ones the corpus rarely moves),
and the map back, ``X ≈ Y M + c``, the same way. Texts are split (seeded) into fitting and
held-out ones; the fit is reported as R² on the held-out tokens,
``1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²``. Without a given ``l2``, each direction's ridge strength is
chosen from :data:`L2_GRID` by R² on a seeded validation share of the *fitting* texts
(:func:`choose_l2`), then the map is refitted on all of them; the held-out texts, which
report R², take no part in the choice.

**The corpus** (:data:`CORPORA`, :func:`map_corpus`). A map only learns how the analog's
stream relates to the frontier's along the directions its corpus moves: one fitted on
filler text (``neutral``: no sentiment at all) carries a sentiment vector nowhere near the
frontier's own (−0.35× to 0.40× its effect on the benchmark's demo builds), because
reviews' sentiment direction barely varies in filler. The default is ``general``: the toy
world's mixed text (every kind of document in the training mix, drawn with a seed apart
from the training and held-out corpora), what a lab would fit on — its general text, not
the very task text a finding is about. ``docs/transfer-benchmark.md`` reports R² and
mapped/native ratios per corpus.

**The first positions of a text** (:data:`MIN_CONTEXT`). A token enters the fit only with at
least 8 tokens of its text before it. A text's first positions are where the two models'
streams relate least and weigh most: little context, and norms up to twice the later
positions' on the demo analogs, so they took most of the least-squares fit; and what the
maps carry is read where there is context (a steering vector is the contrast texts' last
token). On the seed-0 demo build, the smaller analog's sentiment vector at depth 0.5 carried
through a general map fitted on every token had cosine 0.55 to the frontier's native vector
(0.58, 0.63, 0.66 leaving out the first 1, 2, 4 positions) and 0.93 leaving out the first
8; the larger analog's 0.79 and 0.95. ``min_context=0`` fits every token.

What the maps carry: a steering vector ``v_a`` found on the analog becomes ``v_a W`` on the
frontier (a difference of activations: the offset cancels); a probe direction ``w_a`` (read as
``w_a · x_a``) becomes ``M w_a`` (since ``w_a · x_a ≈ (M w_a) · y + w_a · c``).

A map is fitted **at the lab site** (it needs the frontier's activations) and kept there
(:meth:`ResidualMap.save`: one ``.npz``); like any result, it leaves the site only through a
release decision. Results of the mapped methods carry its fit (R²), never its matrices.
:func:`fit_ridge` and :func:`r_squared` are pure numpy; :func:`fit_map` runs the two models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analoglab.errors import AnalogLabError

MAP_VERSION = 1
#: The corpora a map can be fitted on, and what each is.
CORPORA = {
    "general": "the toy world's mixed text: every kind of document in the training mix",
    "neutral": "filler sentences without sentiment (the steering side-effect set)",
}
#: The corpus ``analoglab map fit``, ``lab map fit`` and the foundry's maps stage fit on.
DEFAULT_CORPUS = "general"
#: The ridge strengths (per token, in units of each standardised input's variance) a fit
#: without a given ``l2`` chooses from by validation R².
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: The share of the fitting texts that validates the choice of ``l2``.
VALIDATION = 0.2
#: A token enters a map's fit (and its held-out R²) only with at least this many tokens of
#: its text before it (module docstring: the first positions of a text).
MIN_CONTEXT = 8


def neutral_corpus(texts: int, seed: int) -> list[str]:
    """The neutral corpus texts: a seeded draw apart from the task sets' default seed."""
    from analoglab.foundry.tasks import task_set

    return [str(t) for t in task_set("neutral", texts, seed + 12345).items]


def general_corpus(texts: int, seed: int) -> list[str]:
    """The toy world's mixed text (the foundry's document mix), drawn with a seed apart from
    a build's training (``seed``) and held-out (``seed + 1000``) corpora."""
    from analoglab.foundry import corpus
    from analoglab.foundry.world import World

    return list(corpus.generate(texts, seed + 12345, World.create(0)))


def map_corpus(name: str, texts: int, seed: int) -> list[str]:
    """The ``texts`` texts of corpus ``name`` (:data:`CORPORA`) a map is fitted on."""
    if name == "general":
        return general_corpus(texts, seed)
    if name == "neutral":
        return neutral_corpus(texts, seed)
    raise MapError(
        f"unknown map corpus {name[:40]!r}: choose one of {', '.join(CORPORA)} "
        f"({DEFAULT_CORPUS} by default)"
    )


class MapError(AnalogLabError):
    """A residual map that cannot be fitted, read or used as asked."""


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """``W [d_x, d_y]`` and ``b [d_y]`` of the ridge fit ``y ≈ x W + b`` on standardised
    ``x`` (module docstring; ``λ = l2 · n``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    sd = x.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z, yc = (x - mx) / sd, y - my
    lam = l2 * x.shape[0]
    w_z: np.ndarray = np.linalg.solve(z.T @ z + lam * np.eye(x.shape[1]), z.T @ yc)
    w: np.ndarray = w_z / sd[:, None]
    b: np.ndarray = my - mx @ w
    return w, b


def choose_l2(
    x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray], grid: Sequence[float]
) -> float:
    """The ridge strength of ``grid`` whose fit on ``x[0] → y[0]`` predicts the validation
    rows ``y[1]`` from ``x[1]`` best (largest R²; the larger strength on ties)."""
    best, best_r2 = max(grid), -math.inf
    for l2 in sorted(grid, reverse=True):
        w, b = fit_ridge(x[0], y[0], l2)
        r2 = r_squared(y[1], x[1] @ w + b)
        if r2 > best_r2 + 1e-9:
            best, best_r2 = l2, r2
    return best


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    """``1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` over the rows (1: perfect; 0: no better than the mean)."""
    y = np.asarray(y, np.float64)
    total = float(((y - y.mean(0)) ** 2).sum())
    if total <= 0.0:
        return 0.0
    return 1.0 - float(((y - np.asarray(predicted, np.float64)) ** 2).sum()) / total


@dataclass(frozen=True)
class LayerMap:
    """The map at one relative depth, both ways, and its held-out fit."""

    depth: float
    analog_block: int
    frontier_block: int
    forward: np.ndarray  # W [d_a, d_f]
    forward_bias: np.ndarray  # b [d_f]
    backward: np.ndarray  # M [d_f, d_a]
    backward_bias: np.ndarray  # c [d_a]
    r2_forward: float
    r2_backward: float
    l2_forward: float = 0.0
    l2_backward: float = 0.0

    @property
    def analog_width(self) -> int:
        return int(self.forward.shape[0])

    @property
    def frontier_width(self) -> int:
        return int(self.forward.shape[1])

    def steering_vector(self, vector: Sequence[float]) -> np.ndarray:
        """An analog steering vector on the frontier: ``v W``."""
        mapped: np.ndarray = np.asarray(vector, np.float64) @ self.forward
        return mapped

    def probe_direction(self, direction: Sequence[float]) -> np.ndarray:
        """An analog probe direction on the frontier: ``M w``."""
        mapped: np.ndarray = self.backward @ np.asarray(direction, np.float64)
        return mapped


@dataclass(frozen=True)
class ResidualMap:
    """Maps between one analog and one frontier at several relative depths."""

    analog: str
    analog_weights_sha256: str
    frontier: str
    frontier_weights_sha256: str
    l2: float | None
    tokens_fit: int
    tokens_held_out: int
    layers: tuple[LayerMap, ...]
    corpus: str = "neutral"
    texts: int = 0
    min_context: int = 0

    def at(self, depth: float) -> LayerMap:
        """The map at ``depth`` (within 1e-6 of a fitted depth); else a :class:`MapError`."""
        for layer in self.layers:
            if abs(layer.depth - depth) <= 1e-6:
                return layer
        fitted = ", ".join(f"{layer.depth:g}" for layer in self.layers)
        raise MapError(
            f"the map {self.analog} → {self.frontier} has no depth {depth:g} (fitted at "
            f"{fitted}); fit one there or give the artifact's depth as one of these"
        )

    def summary(self) -> dict[str, Any]:
        """What may be shown of a map without its matrices: who, where and how well."""
        return {
            "analog": self.analog,
            "frontier": self.frontier,
            "l2": self.l2,
            "corpus": self.corpus,
            "texts": self.texts,
            "min_context": self.min_context,
            "tokens_fit": self.tokens_fit,
            "tokens_held_out": self.tokens_held_out,
            "layers": [
                {
                    "depth": layer.depth,
                    "analog_block": layer.analog_block,
                    "frontier_block": layer.frontier_block,
                    "r2_forward": round(layer.r2_forward, 6),
                    "r2_backward": round(layer.r2_backward, 6),
                    "l2_forward": layer.l2_forward,
                    "l2_backward": layer.l2_backward,
                }
                for layer in self.layers
            ],
        }

    def save(self, path: str | Path) -> Path:
        """One ``.npz``: the matrices, and the summary as JSON (``meta``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.summary() | {
            "map_version": MAP_VERSION,
            "analog_weights_sha256": self.analog_weights_sha256,
            "frontier_weights_sha256": self.frontier_weights_sha256,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for k, layer in enumerate(self.layers):
            arrays[f"forward_{k}"] = layer.forward
            arrays[f"forward_bias_{k}"] = layer.forward_bias
            arrays[f"backward_{k}"] = layer.backward
            arrays[f"backward_bias_{k}"] = layer.backward_bias
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ResidualMap:
        """The map saved at ``path``; a :class:`MapError` (one line) for a file that is
        missing, unreadable, corrupt or not a residual map of this version."""
        path = Path(path)
        if not path.is_file():
            raise MapError(f"no residual map at {path}: fit one with `analoglab map fit`")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "meta" not in data.files:
                    raise MapError(f"{path} is not a residual map (no 'meta' entry)")
                meta = json.loads(str(data["meta"]))
                arrays = {k: np.asarray(data[k]) for k in data.files if k != "meta"}
        except MapError:
            raise
        except Exception as exc:  # zipfile, numpy and json each raise their own
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MapError(f"cannot read the residual map {path}: {reason}") from None
        if not isinstance(meta, dict) or meta.get("map_version") != MAP_VERSION:
            raise MapError(f"{path} is not a residual map of version {MAP_VERSION}")
        try:
            layers = tuple(_layer_of(info, arrays, k) for k, info in enumerate(meta["layers"]))
            return cls(
                analog=str(meta["analog"]),
                analog_weights_sha256=str(meta["analog_weights_sha256"]),
                frontier=str(meta["frontier"]),
                frontier_weights_sha256=str(meta["frontier_weights_sha256"]),
                l2=None if meta["l2"] is None else float(meta["l2"]),
                tokens_fit=int(meta["tokens_fit"]),
                tokens_held_out=int(meta["tokens_held_out"]),
                layers=layers,
                # maps saved before the corpus choice were fitted on neutral text
                corpus=str(meta.get("corpus", "neutral")),
                texts=int(meta.get("texts", 0)),
                # maps saved before the first positions were left out fitted every token
                min_context=int(meta.get("min_context", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MapError(
                f"{path} is not a complete residual map (missing or malformed: {exc})"
            ) from None


def _layer_of(info: dict[str, Any], arrays: dict[str, np.ndarray], k: int) -> LayerMap:
    """Layer ``k`` of a saved map, its matrices checked against each other."""
    layer = LayerMap(
        depth=float(info["depth"]),
        analog_block=int(info["analog_block"]),
        frontier_block=int(info["frontier_block"]),
        forward=arrays[f"forward_{k}"],
        forward_bias=arrays[f"forward_bias_{k}"],
        backward=arrays[f"backward_{k}"],
        backward_bias=arrays[f"backward_bias_{k}"],
        r2_forward=float(info["r2_forward"]),
        r2_backward=float(info["r2_backward"]),
        l2_forward=float(info.get("l2_forward", 0.0)),
        l2_backward=float(info.get("l2_backward", 0.0)),
    )
    d_a, d_f = layer.forward.shape if layer.forward.ndim == 2 else (-1, -1)
    if (
        layer.backward.shape != (d_f, d_a)
        or layer.forward_bias.shape != (d_f,)
        or layer.backward_bias.shape != (d_a,)
    ):
        raise ValueError(f"the matrices of layer {k} do not fit each other")
    return layer


def fit_layer(
    depth: float,
    blocks: tuple[int, int],
    x: tuple[np.ndarray, np.ndarray],
    y: tuple[np.ndarray, np.ndarray],
    l2: float | None,
    validation: np.ndarray | None = None,
) -> LayerMap:
    """The map at one depth from analog rows ``x = (fit, held_out)`` and frontier rows ``y``.
    ``l2`` None: each direction's strength is chosen (:func:`choose_l2`) with the fitting rows
    flagged by ``validation`` held back, then the map is refitted on all fitting rows."""

    def strength(src: np.ndarray, dst: np.ndarray) -> float:
        if l2 is not None:
            return l2
        if validation is None or validation.all() or not validation.any():
            return 1e-2
        keep = ~validation
        return choose_l2((src[keep], src[validation]), (dst[keep], dst[validation]), L2_GRID)

    l2_f, l2_b = strength(x[0], y[0]), strength(y[0], x[0])
    w, b = fit_ridge(x[0], y[0], l2_f)
    m, c = fit_ridge(y[0], x[0], l2_b)
    return LayerMap(
        depth=depth,
        analog_block=blocks[0],
        frontier_block=blocks[1],
        forward=w,
        forward_bias=b,
        backward=m,
        backward_bias=c,
        r2_forward=r_squared(y[1], x[1] @ w + b),
        r2_backward=r_squared(x[1], y[1] @ m + c),
        l2_forward=l2_f,
        l2_backward=l2_b,
    )


def fit_map(
    analog: Any,
    frontier: Any,
    texts: Sequence[str],
    depths: Sequence[float],
    *,
    l2: float | None = None,
    held_out: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    max_tokens: int = 128,
    corpus: str = "given",
    min_context: int = MIN_CONTEXT,
) -> ResidualMap:
    """Fit the map between ``analog`` and ``frontier`` (two ``LoadedModel``) at ``depths`` on
    the real tokens of ``texts`` with at least ``min_context`` tokens of their text before
    them; a seeded ``held_out`` share of the texts measures R².
    ``l2`` None chooses each direction's ridge strength by validation R² (module docstring);
    ``corpus`` names where the texts came from, in the map's metadata."""
    import torch

    from analoglab.experiments.methods.common import encode, forward
    from analoglab.experiments.methods.fidelity import check_same_vocabulary
    from analoglab.interventions import block_at_depth, capture, layout_of

    if l2 is not None and not (l2 > 0.0 and math.isfinite(l2)):
        raise MapError(
            f"l2 must be a positive number (got {l2:g}): without ridge the fit is singular "
            "wherever the stream has fewer directions than dimensions; without one it is "
            "chosen by validation R²"
        )
    if len(texts) < 2:
        raise MapError("a map needs at least 2 texts (some to fit on, some held out)")
    if not depths:
        raise MapError("give at least one relative depth to fit a map at")
    if min_context < 0:
        raise MapError(f"min_context must be 0 or more (got {min_context})")
    check_same_vocabulary(analog, frontier, texts[0])
    la, lf = layout_of(analog.model), layout_of(frontier.model)
    pairs = [(block_at_depth(d, la.n_layers), block_at_depth(d, lf.n_layers)) for d in depths]
    names_a = [la.hook_name("hook_resid_post", block=i) for i, _ in pairs]
    names_f = [lf.hook_name("hook_resid_post", block=j) for _, j in pairs]
    order = np.random.default_rng([seed, 0x3A9]).permutation(len(texts))
    n_out = min(max(1, round(held_out * len(texts))), len(texts) - 1)
    is_held_out = np.zeros(len(texts), dtype=bool)
    is_held_out[order[:n_out]] = True
    # a seeded share of the fitting texts validates the choice of l2
    n_val = max(1, round(VALIDATION * (len(texts) - n_out)))
    is_validation = np.zeros(len(texts), dtype=bool)
    is_validation[order[n_out : n_out + n_val]] = True
    rows: dict[tuple[str, bool], list[np.ndarray]] = {}
    validation_rows: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            flags = is_held_out[start : start + len(chunk)]
            for loaded, names, side in ((analog, names_a, "a"), (frontier, names_f, "f")):
                enc = encode(loaded.tokenizer, chunk, max_tokens, loaded.device)
                with capture(loaded.model, names) as cache:
                    forward(loaded.model, enc)
                # a text's tokens with min_context of its tokens before them (left padded)
                real = enc.real & (enc.real.cumsum(dim=1) > min_context)
                if side == "a":
                    fitting = real & torch.as_tensor(~flags, device=real.device)[:, None]
                    per_text = np.repeat(
                        is_validation[start : start + len(chunk)],
                        fitting.sum(dim=1).cpu().numpy(),
                    )
                    validation_rows.append(per_text)
                for k, name in enumerate(names):
                    acts = cache[name].double()
                    for held in (False, True):
                        keep = real & torch.as_tensor(flags == held, device=real.device)[:, None]
                        part = acts[keep].cpu().numpy()
                        rows.setdefault((f"{side}{k}", held), []).append(part)

    def stacked(key: str, held: bool) -> np.ndarray:
        return np.concatenate(rows[(key, held)])

    for held, which in ((False, "fit on"), (True, "held out")):
        if stacked("a0", held).shape[0] == 0:
            raise MapError(
                f"no token of the texts {which} has {min_context} tokens of its text before "
                "it: give longer texts, or a smaller min_context"
            )

    try:
        layers = tuple(
            fit_layer(
                float(d),
                pairs[k],
                (stacked(f"a{k}", False), stacked(f"a{k}", True)),
                (stacked(f"f{k}", False), stacked(f"f{k}", True)),
                l2,
                np.concatenate(validation_rows),
            )
            for k, d in enumerate(depths)
        )
    except np.linalg.LinAlgError as exc:
        raise MapError(f"the ridge fit failed ({exc}): raise l2 or fit on more text") from None
    return ResidualMap(
        analog=analog.name,
        analog_weights_sha256=analog.weights_sha256,
        frontier=frontier.name,
        frontier_weights_sha256=frontier.weights_sha256,
        l2=l2,
        tokens_fit=int(stacked("a0", False).shape[0]),
        tokens_held_out=int(stacked("a0", True).shape[0]),
        layers=layers,
        corpus=corpus,
        texts=len(texts),
        min_context=min_context,
    )
