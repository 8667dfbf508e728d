"""Settings: defaults under home, env over file over default, clear errors, sources shown,
secrets masked (URIs with passwords, secret settings)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from analoglab.config import (
    Settings,
    explain,
    get_settings,
    mask_uri,
    read_secret,
    redact_text,
    without_credentials,
)
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


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://analoglab:hunter2@db:5432/queue", "postgresql://analoglab:***@db:5432/queue"),
        ("postgresql+psycopg://u:p@ss:w/rd@h/d", "postgresql+psycopg://u:***@h/d"),
        ("https://alice:s3cr%40t@mlflow.example/x?a=1", "https://alice:***@mlflow.example/x?a=1"),
        ("https://ghp_0123456789abcdefghij@example.org/r", "https://***@example.org/r"),
        ("http://h/x?token=abc&x=1&X-Amz-Signature=zz", "http://h/x?token=***&x=1&X-Amz-Signature=***"),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("sqlite:////var/lib/analoglab/queue.db", "sqlite:////var/lib/analoglab/queue.db"),
        ("/just/a/path", "/just/a/path"),
    ],
)
def test_mask_uri_hides_passwords_and_secret_parameters(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


def test_redact_text_masks_every_uri_in_a_message() -> None:
    text = "cannot reach postgresql://u:pw1@h:5/d (nor https://a:pw2@x.y/z); see /tmp/log"
    assert redact_text(text) == (
        "cannot reach postgresql://u:***@h:5/d (nor https://a:***@x.y/z); see /tmp/log"
    )


def test_explain_shows_no_secret(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALOGLAB_MLFLOW_TRACKING_URI", "postgresql://ml:hunter2@db/mlflow")
    monkeypatch.setenv("ANALOGLAB_QUEUE_URL", "https://bot:hunter3@queue.example")
    monkeypatch.setenv("ANALOGLAB_QUEUE_PAGE_SECRET", "a-page-secret-of-the-replicas")
    monkeypatch.setenv("ANALOGLAB_QUEUE_DATABASE_URL", "postgresql+psycopg://q:hunter4@db/q")
    rows = {r.name: r for r in explain(get_settings())}
    assert rows["queue_database_url"].value == "postgresql+psycopg://q:***@db/q"
    assert rows["mlflow_tracking_uri"].value == "postgresql://ml:***@db/mlflow"
    assert rows["queue_url"].value == "https://bot:***@queue.example"
    assert rows["queue_page_secret"].value == "***"
    assert rows["queue_page_secret"].source == "env ANALOGLAB_QUEUE_PAGE_SECRET"
    shown = repr([r.value for r in rows.values()])
    assert "hunter" not in shown and "a-page-secret" not in shown


def test_read_secret_from_a_file_or_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "token"
    secret.write_text("  s3cret-token\n")
    assert read_secret(secret) == "s3cret-token"
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert read_secret("-") == "from-stdin"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(tmp_path / "empty", what="the token")
    with pytest.raises(ConfigError, match="cannot read the token from"):
        read_secret(tmp_path / "missing", what="the token")


def test_the_queue_database_url_comes_from_the_environment(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL with a password need not be on `queue serve`'s command line."""
    from analoglab.queue.db import default_url

    assert default_url(get_settings()) == f"sqlite:///{home.home / 'queue.db'}"
    monkeypatch.setenv("ANALOGLAB_QUEUE_DATABASE_URL", "postgresql+psycopg://q:pw@db/q")
    assert default_url(get_settings()) == "postgresql+psycopg://q:pw@db/q"


def test_links_carry_no_credentials(home: Settings) -> None:
    """A run's MLflow link is shown and stored (model versions keep it): no password in it."""
    from analoglab.tracking.store import TrackingStore

    assert without_credentials("https://u:pw@mlflow.example/x") == "https://mlflow.example/x"
    assert without_credentials("https://mlflow.example/u/@me") == "https://mlflow.example/u/@me"
    store = TrackingStore(uri="https://ml:hunter7@mlflow.example/", settings=home, client=None)
    assert store.run_url("1", "abc") == "https://mlflow.example/#/experiments/1/runs/abc"
    assert store.model_url("m") == "https://mlflow.example/#/models/m"
