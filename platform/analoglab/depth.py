"""Relative depth: the one rule that turns a depth in [0, 1] into a block index.

Depth ``d`` on a model of ``L`` blocks is block ``floor(d · (L − 1) + 0.5)``: the nearest block,
halves rounded up (a hair of slack so that 0.5 of 3 blocks is block 1 despite floating point).
The interventions layer (:func:`analoglab.interventions.names.block_at_depth`, which also
checks its arguments) and the queue's vetting (which must not import torch) both use it, so the
hub refuses exactly the blocks a lab site would hook.
"""

from __future__ import annotations

import math

# A depth such as 0.35 is 0.35000000000000003 in binary; without this slack a depth meant to
# land exactly on a half could round down on one model and up on another.
HALF_SLACK = 1e-9


def nearest_block(depth: float, n_layers: int) -> int:
    """The block at relative ``depth`` of ``n_layers`` blocks, clamped to the model."""
    return min(n_layers - 1, max(0, math.floor(depth * (n_layers - 1) + 0.5 + HALF_SLACK)))
