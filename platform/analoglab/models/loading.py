"""Loading models from local folders: analogs from the model store, or any local Hugging Face
causal LM checkpoint. Always offline: nothing is ever downloaded.

Every model loaded here has its interventions layout inferred and verified at load
(:func:`analoglab.interventions.verify_layout`, a few random tokens, cached per model type
and config); the report is :attr:`LoadedModel.layout`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analoglab.config import Settings, get_settings
from analoglab.errors import ConfigError, CorruptModelError, ModelNotFoundError
from analoglab.models.card import AnalogCard
from analoglab.models.catalog import AnalogEntry, Catalog

if TYPE_CHECKING:
    from analoglab.interventions import LayoutReport

# No hub is reachable from a fresh install; never let transformers try one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs; we show our own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and identity; unpacks as ``model, tokenizer``."""

    model: Any
    tokenizer: Any
    name: str
    path: Path
    weights_sha256: str
    card: AnalogCard | None = None
    layout: LayoutReport | None = None
    """The interventions layout's self-test at load: which hook sites this model offers."""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def best_device(preference: str = "auto") -> Any:
    """The torch device to run on: CUDA, then Apple MPS, then the CPU, unless told otherwise."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto'")
    return torch.device(preference)


def weights_sha256(folder: Path) -> str:
    """sha256 over the model's weight files (in a fixed order), streamed."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    for path in files:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def check_model_folder(folder: Path) -> None:
    """A clear error unless ``folder`` looks like a Hugging Face causal LM checkpoint."""
    if not folder.exists():
        raise ModelNotFoundError(f"no model folder at {folder}")
    if not folder.is_dir():
        raise CorruptModelError(f"{folder} is a file, not a model folder")
    if not (folder / "config.json").is_file():
        raise CorruptModelError(f"{folder} has no config.json: not a Hugging Face model folder")
    has_weights = any((folder / f).is_file() for f in WEIGHT_FILES) or any(
        folder.glob("*.safetensors")
    )
    if not has_weights:
        raise CorruptModelError(f"{folder} has no weights (model.safetensors or pytorch_model.bin)")


def load_model(
    path: str | Path,
    device: str | None = None,
    dtype: Any = None,
    name: str | None = None,
    expected_sha256: str | None = None,
    verify: bool = True,
) -> LoadedModel:
    """Load any local Hugging Face causal LM and its tokenizer, offline, in eval mode.

    With ``expected_sha256`` the weights are checked against it before anything is loaded.
    With ``verify`` (the default) the interventions layout is verified on load; a layout that
    fails is refused when a hook would use it, and :attr:`LoadedModel.layout` says why.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path).expanduser()
    check_model_folder(folder)
    digest = weights_sha256(folder)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CorruptModelError(
            f"the weights in {folder} do not match its card's checksum; "
            f"reinstall it with `analoglab models install`"
        )
    quiet_transformers()
    target = best_device(device or get_settings().device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a damaged tokenizer
        raise CorruptModelError(
            f"the tokenizer in {folder} cannot be loaded: {_first(exc)}"
        ) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype
        )
    except Exception as exc:  # likewise for weights and config
        raise CorruptModelError(f"the model in {folder} cannot be loaded: {_first(exc)}") from exc
    model.to(target).eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    loaded = LoadedModel(model, tokenizer, name or folder.name, folder, digest)
    if verify:
        from analoglab.interventions import verify_layout

        loaded.layout = verify_layout(model)
    return loaded


def load_analog(
    name: str, device: str | None = None, dtype: Any = None, settings: Settings | None = None
) -> LoadedModel:
    """Load an analog from the public model store by name, checking its weights against its card."""
    return _load_entry(Catalog.load(settings or get_settings()).analog(name), device, dtype)


def _load_entry(entry: AnalogEntry, device: str | None, dtype: Any) -> LoadedModel:
    loaded = load_model(
        entry.path,
        device=device,
        dtype=dtype,
        name=entry.name,
        expected_sha256=entry.card.weights_sha256,
    )
    loaded.card = entry.card
    return loaded


def lab_site_models(settings: Settings | None = None) -> dict[str, Path]:
    """Frontier id → weights folder, from every lab site's ``lab.toml`` on this machine."""
    import tomllib

    settings = settings or get_settings()
    found: dict[str, Path] = {}
    root = settings.lab_sites_path
    for cfg in sorted(root.glob("*/lab.toml")) if root.is_dir() else []:
        try:
            data = tomllib.loads(cfg.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CorruptModelError(f"lab site config {cfg} cannot be read: {exc}") from exc
        for model_id, entry in data.get("models", {}).items():
            path = Path(entry.get("path", ""))
            found[model_id] = path if path.is_absolute() else cfg.parent / path
    return found


def load_any(
    name_or_path: str, device: str | None = None, settings: Settings | None = None
) -> LoadedModel:
    """A model by folder path, analog name, or frontier id on a lab site of this machine."""
    settings = settings or get_settings()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_model(path, device=device)
    catalog = Catalog.load(settings)
    for entry in catalog.analogs:
        if entry.name == name_or_path:
            return _load_entry(entry, device, None)
    sites = lab_site_models(settings)
    if name_or_path in sites:
        return load_model(sites[name_or_path], device=device, name=name_or_path)
    known = sorted([a.name for a in catalog.analogs] + list(sites))
    raise ModelNotFoundError(
        f"no model {name_or_path!r}: not a folder, an analog in the store, or a frontier on a "
        f"lab site here" + (f"; known: {', '.join(known)}" if known else "")
    )


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
