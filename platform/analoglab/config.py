"""Settings: environment variables ``ANALOGLAB_*``, an optional TOML file, and defaults.

Every setting is declared once here with its description and a default that works on one
machine. Precedence, highest first: explicit arguments, environment (``ANALOGLAB_<NAME>``),
the TOML config file (``ANALOGLAB_CONFIG``, else ``<home>/config.toml``), defaults.

All state lives under one data folder, ``home``; the folders below it (model store, catalog,
lab sites, foundry work, caches) default to sub-folders of it and can each be moved.

Secrets are never shown: :func:`mask_uri` hides a URI's password (and secret-looking query
parameters), :func:`redact_text` does it for every URI inside a message, and :func:`explain`
(``analoglab config show``) prints secret settings as ``***``. Use them wherever a URI or a
setting is printed or logged. :func:`read_secret` reads a secret from a file or standard
input, so that it never sits on a command line (where ``ps`` shows it to everyone).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode

import platformdirs
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from analoglab.errors import ConfigError

ENV_PREFIX = "ANALOGLAB_"
CONFIG_ENV = "ANALOGLAB_CONFIG"

Device = Literal["auto", "cpu", "cuda", "mps"]

# Folders under home that default to a sub-folder of it: setting name -> folder name.
_HOME_FOLDERS = {
    "model_store": "models",
    "catalog_dir": "catalog",
    "lab_sites_dir": "lab-sites",
    "foundry_dir": "foundry",
    "cache_dir": "cache",
}


MASK = "***"
#: Query parameters whose values are credentials (presigned URLs, tokens in links).
_SECRET_PARAM = re.compile(
    r"(pass(word)?|pwd|secret|token|key|signature|sig|credential|auth)", re.IGNORECASE
)
#: Settings whose values are secrets whatever their type.
_SECRET_SETTING = re.compile(r"(secret|token|password|credential)", re.IGNORECASE)
_WEB = ("http", "https")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def mask_uri(uri: str) -> str:
    """``uri`` with its password and secret query parameters replaced by ``***``.

    >>> mask_uri("postgresql://analoglab:hunter2@db:5432/queue")
    'postgresql://analoglab:***@db:5432/queue'

    The user name stays (it names the account, and is rarely secret); ``https://TOKEN@host``
    (a long user name and no password: a token) is masked too. The password runs to the last
    ``@``, so one holding ``@``, ``/`` or ``?`` unencoded is hidden whole. Anything not shaped
    like ``scheme://...`` comes back unchanged.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return uri
    at = rest.rfind("@")
    if at >= 0:
        userinfo, host = rest[:at], rest[at + 1 :]
        user, colon, _password = userinfo.partition(":")
        if colon and "/" not in user:
            rest = f"{user}:{MASK}@{host}"
        elif not colon and "/" not in userinfo and len(userinfo) >= 20 and scheme in _WEB:
            rest = f"{MASK}@{host}"  # a token as the user name
    head, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            masked = [(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs]
            query = urlencode(masked, safe="*", quote_via=quote)
        rest = f"{head}?{query}{hash_}{fragment}"
    return f"{scheme}://{rest}"


def without_credentials(uri: str) -> str:
    """``uri`` without its user and password: for links that others see (a run's page)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return uri
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, authority_end)
    if at < 0:
        at = rest.rfind("@")  # a password holding / ? or # unencoded
        if at < 0 or ":" not in rest[:at]:
            return uri
    return f"{scheme}://{rest[at + 1 :]}"


def redact_text(text: str) -> str:
    """``text`` with every URI in it masked (:func:`mask_uri`): for messages and logs."""
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), text)


def redact(name: str, value: Any) -> Any:
    """A setting's value as it may be shown: secrets as ``***``, URIs masked."""
    if value is None:
        return None
    if isinstance(value, SecretStr) and _URI_IN_TEXT.fullmatch(value.get_secret_value()):
        return mask_uri(value.get_secret_value())  # a URI: its password masked, the rest shown
    if isinstance(value, SecretStr) or _SECRET_SETTING.search(name):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value


def read_secret(source: str | Path, *, what: str = "the secret") -> str:
    """A secret from ``source`` without putting it on a command line: ``-`` reads standard
    input (a prompt without echo on a terminal), anything else is a file (a warning-worthy
    mode is the caller's business). Surrounding whitespace is dropped; empty is an error."""
    if str(source) == "-":
        if sys.stdin.isatty():
            import getpass

            value = getpass.getpass(f"{what}: ")
        else:
            value = sys.stdin.read()
        where = "standard input"
    else:
        path = Path(source).expanduser()
        try:
            value = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"cannot read {what} from {path}: {reason}") from exc
        where = str(path)
    value = value.strip()
    if not value:
        raise ConfigError(f"{what} from {where} is empty")
    return value


def default_home() -> Path:
    """The per-user data folder used when ``ANALOGLAB_HOME`` is not set."""
    return Path(platformdirs.user_data_dir("analoglab", appauthor=False))


def config_file_path() -> Path:
    """The TOML config file: ``ANALOGLAB_CONFIG``, else ``<home>/config.toml``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get(ENV_PREFIX + "HOME")
    return (Path(home).expanduser() if home else default_home()) / "config.toml"


class Settings(BaseSettings):
    """The effective configuration of Analog Lab on this machine."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(), validate_default=True
    )

    home: Path = Field(
        default_factory=default_home,
        description="The data folder holding the model store, catalog, lab sites, "
        "databases and caches. `make` points it at ./.analoglab.",
    )
    model_store: Path | None = Field(
        default=None,
        description="The public model store: one folder per analog (weights, tokenizer, card). "
        "Default: <home>/models.",
    )
    catalog_dir: Path | None = Field(
        default=None,
        description="Catalog entries of labs and their frontier models (metadata and policy, "
        "never weights). Default: <home>/catalog.",
    )
    lab_sites_dir: Path | None = Field(
        default=None,
        description="Lab sites on this machine (the demo lab's frontier weights live here, "
        "apart from the public store). Default: <home>/lab-sites.",
    )
    foundry_dir: Path | None = Field(
        default=None,
        description="Work folder of the demo foundry: corpora, tokenizers, checkpoints, logs. "
        "Default: <home>/foundry.",
    )
    cache_dir: Path | None = Field(
        default=None, description="Caches that can be deleted at any time. Default: <home>/cache."
    )
    device: Device = Field(
        default="auto",
        description="Where models run: auto picks CUDA, then MPS, then the CPU.",
    )
    queue_url: str | None = Field(
        default=None,
        description="URL of the gated queue service, where one is configured (checked by doctor).",
    )
    queue_database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the queue's database (it may hold a password: set it "
        "here or in the environment, not on a command line). Unset: sqlite:///<home>/queue.db.",
    )
    queue_page_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Key of the queue's review-page CSRF tokens: give every replica the same "
        "value so that open forms survive restarts. Unset: random per process.",
    )
    queue_session_seconds: int = Field(
        default=8 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="How long a browser stays signed in to the queue's review pages "
        "(signing out ends it sooner).",
    )
    queue_hub_auth: bool | None = Field(
        default=None,
        description="The queue service accepts JupyterHub tokens (custom:analoglab:* scopes) "
        "besides its static tokens. Unset: on when JUPYTERHUB_API_TOKEN is set (a hub service).",
    )
    queue_hub_api_url: str | None = Field(
        default=None,
        description="JupyterHub's API URL for the queue's token checks. Unset: "
        "JUPYTERHUB_API_URL, else http://127.0.0.1:8081/hub/api.",
    )
    queue_hub_cache_seconds: int = Field(
        default=60,
        ge=0,
        description="How long the queue service keeps JupyterHub's answer about a token.",
    )
    queue_audit_key: Path | None = Field(
        default=None,
        description="The queue's Ed25519 key that signs the audit log's head (PEM, mode 0600, "
        "created on first use; keep it outside the database). Default: "
        "<home>/queue/audit-signing-key.pem.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; unset means a local SQLite store in the data folder.",
    )
    default_preset: str = Field(
        default="demo", description="Foundry preset that `make up` and `models build` use."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file_path()),
        )

    def folder(self, name: str) -> Path:
        """The resolved path of one of the folders under home (``model_store``, ...)."""
        value = getattr(self, name)
        if value is not None:
            return Path(value).expanduser()
        return self.home.expanduser() / _HOME_FOLDERS[name]

    @property
    def models_path(self) -> Path:
        return self.folder("model_store")

    @property
    def catalog_path(self) -> Path:
        return self.folder("catalog_dir")

    @property
    def lab_sites_path(self) -> Path:
        return self.folder("lab_sites_dir")

    @property
    def foundry_path(self) -> Path:
        return self.folder("foundry_dir")

    @property
    def cache_path(self) -> Path:
        return self.folder("cache_dir")

    def ensure_folders(self) -> None:
        """Create the data folder and its sub-folders; a clear error if that is impossible."""
        for name in ("home", *_HOME_FOLDERS):
            path = self.home.expanduser() if name == "home" else self.folder(name)
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe = path / ".analoglab-write-test"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(
                    f"data folder {path} is not writable ({exc.strerror or exc}); "
                    f"set ANALOGLAB_HOME to a folder you can write"
                ) from exc


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc


def get_settings(**overrides: Any) -> Settings:
    """Read the settings, turning any bad value into one :class:`ConfigError`."""
    path = config_file_path()
    _read_toml(path)  # a clear error for a broken file before pydantic sees it
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(
            f"invalid setting {field!r}: {first['msg']} "
            f"(from env {ENV_PREFIX}{field.upper()} or {path})"
        ) from exc


@dataclass(frozen=True)
class SettingValue:
    """One row of ``analoglab config show``: a setting, its value (secrets masked: see
    :func:`redact`) and where it came from."""

    name: str
    value: Any
    source: str
    description: str


def explain(settings: Settings) -> list[SettingValue]:
    """Each setting with its effective value and its source (env, file, default, derived)."""
    path = config_file_path()
    file_values = _read_toml(path)
    rows = []
    for name, field in Settings.model_fields.items():
        env_name = ENV_PREFIX + name.upper()
        raw = getattr(settings, name)
        value: Any = raw
        if env_name in os.environ:
            source = f"env {env_name}"
        elif name in file_values:
            source = f"file {path}"
        elif name in _HOME_FOLDERS:
            source = "default (under home)"
        else:
            source = "default"
        if name in _HOME_FOLDERS:
            value = settings.folder(name)
        if isinstance(value, Path):
            value = str(value)
        rows.append(SettingValue(name, redact(name, value), source, field.description or ""))
    rows.append(
        SettingValue(
            "config_file",
            str(path),
            f"env {CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "default (under home)",
            "The TOML file read for settings" + ("" if path.is_file() else " (absent)"),
        )
    )
    return rows
