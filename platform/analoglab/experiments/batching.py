"""Batched execution, the planning: which jobs may share forward passes, and how passes pack.

Torch-free (the lab agent plans with it; :mod:`.packed` runs the plans on a model).

- **What can share.** A job's forward passes can share a batch with other jobs' rows when its
  method only reads logits and captures, or adds a steering vector per row:
  :data:`SHAREABLE_METHODS` (evaluation, activation statistics, probes, steering). Ablation,
  patching, fidelity and the mapped methods never merge: they run alone (:func:`why_alone`).
- **Which jobs merge** (:func:`plan_groups`): shareable jobs for the same frontier and
  weights, in the order given (the queue's fair order), up to a number of jobs; any other
  job is a group of its own.
- **How rows pack** (:func:`pack_passes`): the rows of the passes the jobs of a group ask
  for at one time, sorted by length, are packed in order into forward passes of at most
  ``batch_tokens`` tokens (rows × the widest row, padding included); a row longer than the
  bound runs by itself.
- **The memory bound** (:func:`tokens_within_memory`): how many tokens one pass may hold in
  the memory left beside the weights, from the model's widths.

Each job's rows keep their own attention mask and position ids inside a packed pass (left
padding only widens), and its hooks act on its own rows only, so its result is the one it
gets alone, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The methods whose passes can share a batch with other jobs' rows.
SHAREABLE_METHODS = frozenset({"evaluation", "activation_stats", "probe", "steering"})

#: Tokens per packed forward pass unless the lab says otherwise.
DEFAULT_BATCH_TOKENS = 8192


def why_alone(spec: Mapping[str, Any]) -> str | None:
    """Why a job (its spec as JSON) must run by itself, or None when it can share passes."""
    method = str(spec.get("method", ""))
    if method not in SHAREABLE_METHODS:
        return f"{method or 'this method'} runs alone (its passes cannot share a batch)"
    return None


@dataclass(frozen=True)
class JobShape:
    """What planning needs of one job: its key, where it runs and its largest pass."""

    key: int
    frontier: str
    weights: str
    spec: Mapping[str, Any]

    @property
    def shareable(self) -> bool:
        return why_alone(self.spec) is None

    @property
    def pass_tokens(self) -> int:
        """The most tokens one of its passes holds: ``batch_size × max_tokens_per_prompt``."""
        batch = int(self.spec.get("batch_size", 32))
        tokens = int(self.spec.get("max_tokens_per_prompt", 128))
        return max(1, batch) * max(1, tokens)


def plan_groups(
    jobs: Sequence[JobShape], batch_tokens: int, max_jobs: int | None = None
) -> list[list[int]]:
    """The jobs' keys in groups that run together (a group of one runs alone).

    Jobs keep their order: each shareable job joins the open group of its frontier and
    weights (while it has fewer than ``max_jobs`` jobs), else opens one; any other job is a
    group of its own. Groups come in the order of their first job. ``batch_tokens`` bounds
    each shared forward pass, not the group (:func:`pack_passes` splits a round's rows into
    as many passes as it takes); ``batch_tokens <= 0`` turns batching off: every job alone.
    """
    groups: list[list[int]] = []
    open_: dict[tuple[str, str], int] = {}  # where → its open group
    for job in jobs:
        if batch_tokens <= 0 or not job.shareable:
            groups.append([job.key])
            continue
        where = (job.frontier, job.weights)
        g = open_.get(where)
        if g is not None and (max_jobs is None or len(groups[g]) < max_jobs):
            groups[g].append(job.key)
        else:
            groups.append([job.key])
            open_[where] = len(groups) - 1
    return groups


def pass_cost(rows: int, width: int) -> int:
    """Tokens a pass of ``rows`` rows padded to ``width`` holds."""
    return rows * width


def pack_passes(
    shapes: Sequence[tuple[int, int]], batch_tokens: int, pass_tokens: int | None = None
) -> list[list[int]]:
    """Indices of batches ``(rows, width)`` packed, in order, into shared forward passes of
    at most ``batch_tokens`` tokens each (rows × the widest width; one over the bound alone).

    The cut points minimise what the passes cost: each pass its tokens, padding included,
    plus ``pass_tokens``, the fixed cost of a forward pass counted in tokens (on a CPU a few
    dozen: padding costs about as much as real tokens, so rows of very different lengths are
    better in passes of their own; on an accelerator thousands: as few passes as fit). By
    default a pass costs ``batch_tokens``: the fewest passes, the least padding among them.
    Exact, by dynamic programming over the cut points (batches sorted by width, as the
    packer gives them, leave a few hundred candidates at most)."""
    n = len(shapes)
    if n == 0:
        return []
    fixed = batch_tokens if pass_tokens is None else max(0, pass_tokens)
    best = [0] + [1 << 256] * n  # best[i]: the cheapest packing of the first i batches
    cut = [0] * (n + 1)  # where the last pass of that packing starts
    for end in range(1, n + 1):
        rows = width = 0
        for start in range(end - 1, -1, -1):
            r, w = shapes[start]
            rows, width = rows + r, max(width, w)
            tokens = pass_cost(rows, width)
            if start < end - 1 and tokens > batch_tokens:
                break  # wider or more rows only cost more: no earlier start fits
            cost = best[start] + tokens + fixed
            if cost < best[end]:
                best[end], cut[end] = cost, start
    packs: list[list[int]] = []
    end = n
    while end > 0:
        packs.append(list(range(cut[end], end)))
        end = cut[end]
    return packs[::-1]


def tokens_within_memory(
    free_bytes: int, hidden: int, intermediate: int, layers: int, dtype_bytes: int = 4
) -> int:
    """Tokens one pass may hold in ``free_bytes``: per token, the residual stream and its
    attention and MLP intermediates (≈ 8·hidden + 3·intermediate values) and a capture of
    every layer's residual stream (layers · hidden), in the model's dtype; at least 1."""
    per_token = dtype_bytes * (8 * hidden + 3 * intermediate + layers * hidden)
    return max(1, free_bytes // max(1, per_token))
