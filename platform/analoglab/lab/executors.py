"""Which executor a lab site runs: built from the ``[executor]`` table of its ``lab.toml``."""

from __future__ import annotations

from analoglab.lab.config import LabConfig, LocalExecutorConfig
from analoglab.lab.executor import Executor


def make_executor(config: LabConfig) -> Executor:
    """The configured backend (the Kubernetes client is imported only when it is used)."""
    if isinstance(config.executor, LocalExecutorConfig):
        from analoglab.lab.local import LocalExecutor

        return LocalExecutor(config.executor)
    from analoglab.lab.kubernetes import KubernetesExecutor

    return KubernetesExecutor(config.executor)
