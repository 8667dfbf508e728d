"""TrackingError: MLflow could not be reached or refused what we logged, said in one line.

:func:`mlflow_errors` turns MLflow's exceptions (and HTTP failures it lets through, and
``OSError`` from artifact folders) raised inside its block into a :class:`TrackingError`
naming the tracking URI: the CLI prints one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from analoglab.errors import AnalogLabError


class TrackingError(AnalogLabError):
    """Logging to MLflow failed, or what is logged there does not fit what was asked."""


@contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """Re-raise MLflow's errors inside the block as :class:`TrackingError`."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else ""
        raise TrackingError(f"MLflow at {uri}: {first or type(exc).__name__}") from exc
    except RequestException as exc:  # an OSError too: caught before the next clause
        raise TrackingError(f"MLflow at {uri} is not reachable: {exc}") from exc
    except OSError as exc:  # an artifact folder that cannot be created, written or read
        where = f" ({exc.filename})" if exc.filename else ""
        raise TrackingError(
            f"MLflow at {uri}: artifact storage failed: {exc.strerror or exc}{where}"
        ) from exc
