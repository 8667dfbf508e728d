"""lab.toml: parsing, relative paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from analoglab.config import Settings
from analoglab.errors import ConfigError
from analoglab.lab.config import (
    KubernetesExecutorConfig,
    LocalExecutorConfig,
    load_lab_config,
)


def test_the_foundry_lab_site_reads(tiny_home: Settings) -> None:
    path = tiny_home.lab_sites_path / "tiny-lab" / "lab.toml"
    cfg = load_lab_config(path)
    assert cfg.lab == "tiny-lab"
    weights = cfg.weights("tiny-frontier").path
    assert weights.is_absolute() and (weights / "config.json").is_file()
    assert isinstance(cfg.executor, LocalExecutorConfig)


def test_relative_paths_and_kubernetes_executor(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(
        'lab = "acme"\nhub = "https://hub.example"\ntoken_file = "agent.token"\n'
        '[models.big]\npath = "big-v1"\nsha256 = "' + "a" * 64 + '"\n'
        '[executor]\nkind = "kubernetes"\nimage = "acme/worker:1"\nweights_claim = "w"\n'
        'gpus = 1\nkubeconfig = "kube.yaml"\n[agent]\nlease_seconds = 30\nheartbeat_seconds = 10\n'
    )
    cfg = load_lab_config(tmp_path / "lab.toml")
    assert cfg.token_file == tmp_path / "agent.token"
    assert cfg.models["big"].path == Path("big-v1")  # inside the weights volume
    assert isinstance(cfg.executor, KubernetesExecutorConfig)
    assert cfg.executor.gpus == 1 and cfg.executor.kubeconfig == tmp_path / "kube.yaml"
    assert cfg.agent.lease_seconds == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lab = "Bad Name"\n', "lab"),
        ('lab = "a"\n[executor]\nkind = "slurm"\n', "executor"),
        ('lab = "a"\n[agent]\nlease_seconds = 1\n', "agent.lease_seconds"),
        ('lab = "a"\n[agent]\nlease_seconds = 30\n', "at most a third of lease_seconds"),
        ('lab = "a"\nsurprise = 1\n', "surprise"),
        ("lab = \n", "cannot be read"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "lab.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_lab_config(tmp_path / "lab.toml")


def test_missing_file_and_unknown_frontier(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no lab config"):
        load_lab_config(tmp_path / "nope.toml")
    (tmp_path / "lab.toml").write_text('lab = "a"\n[models.x]\npath = "x"\n')
    with pytest.raises(ConfigError, match="no weights for 'y'.*configured: x"):
        load_lab_config(tmp_path / "lab.toml").weights("y")
