"""Settings: defaults under home, env over file over default, clear errors, sources shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from analoglab.config import Settings, explain, get_settings
from analoglab.errors import ConfigError


def test_folders_default_under_home(home: Settings) -> None:
    assert home.models_path == home.home / "models"
    assert home.lab_sites_path == home.home / "lab-sites"
    home.ensure_folders()
    assert all(
        p.is_dir()
        for p in (home.models_path, home.catalog_path, home.foundry_path, home.cache_path)
    )


def test_env_beats_file_beats_default(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    home.home.mkdir(parents=True)
    (home.home / "config.toml").write_text('device = "cpu"\nqueue_url = "http://q.example"\n')
    monkeypatch.setenv("ANALOGLAB_QUEUE_URL", "http://127.0.0.1:9")
    s = get_settings()
    assert s.device == "cpu" and s.queue_url == "http://127.0.0.1:9"
    rows = {r.name: r for r in explain(s)}
    assert rows["device"].source == f"file {home.home / 'config.toml'}"
    assert rows["queue_url"].source == "env ANALOGLAB_QUEUE_URL"
    assert rows["default_preset"].source == "default"
    assert rows["model_store"].value == str(home.home / "models")
    assert all(r.description for r in rows.values())


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(f'home = "{tmp_path / "h"}"\nmodel_store = "{tmp_path / "store"}"\n')
    monkeypatch.setenv("ANALOGLAB_CONFIG", str(cfg))
    s = get_settings()
    assert s.home == tmp_path / "h" and s.models_path == tmp_path / "store"


def test_bad_values_name_the_setting(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALOGLAB_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="invalid setting 'device'"):
        get_settings()
    monkeypatch.delenv("ANALOGLAB_DEVICE")
    home.home.mkdir(parents=True)
    (home.home / "config.toml").write_text("device = [unclosed")
    with pytest.raises(ConfigError, match="config.toml cannot be read"):
        get_settings()
    (home.home / "config.toml").write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        get_settings()


def test_unwritable_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    s = Settings(home=blocker / "home")
    with pytest.raises(ConfigError, match="not writable.*ANALOGLAB_HOME"):
        s.ensure_folders()
