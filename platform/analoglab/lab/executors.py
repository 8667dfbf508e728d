"""Which executor a lab site runs: built from the ``[executor]`` table of its ``lab.toml``."""

from __future__ import annotations

from analoglab.lab.config import LabConfig, LocalExecutorConfig
from analoglab.lab.executor import Executor

#: What a worker may hand back through a log before the release checks look at it.
MAX_FRAMED_BYTES = 16 * 2**20


def make_executor(config: LabConfig) -> Executor:
    """The configured backend (the Kubernetes client is imported only when it is used)."""
    if isinstance(config.executor, LocalExecutorConfig):
        from analoglab.lab.local import LocalExecutor

        return LocalExecutor(config.executor)
    from analoglab.lab.kubernetes import KubernetesExecutor

    return KubernetesExecutor(config.executor, max_result_bytes=MAX_FRAMED_BYTES)
