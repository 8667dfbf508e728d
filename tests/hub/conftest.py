"""The platform's tests share one module fixture: ``platform``, ``analoglab up`` over two labs
without weights (helpers in ``tests/platformtools.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..platformtools import Running, platform_in, two_labs


@pytest.fixture(scope="module")
def platform() -> Iterator[Running]:
    """One platform per module over :func:`two_labs` (no model is built)."""
    with platform_in(two_labs) as running:
        yield running
