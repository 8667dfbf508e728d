"""The public demo (Gradio): talk to the analogs, look inside them, steer them, compare their
fidelity, and browse the board of released transfer checks.

- :mod:`.limits`: what a visitor may ask (prompt length, tokens, sampling, strength), enforced
  on the server;
- :mod:`.engine`: the analogs, loaded once and shared; completions, the logit lens, steering;
- :mod:`.published`: published steering results and released transfer checks, read from MLflow;
- :mod:`.views`: tables, Markdown and figures each view shows;
- :mod:`.app`: the Gradio app (:func:`build_app`) and :func:`serve`;
- :mod:`.commands`: ``analoglab demo``.

Gradio is imported only when an app is built (the ``demo`` extra)::

    from analoglab.demos import build_app, serve
    serve(build_app(settings), port=7860)
"""

from __future__ import annotations

import importlib
from typing import Any

# Names and the module each lives in: imported on first use, so that ``analoglab --help``
# (which imports :mod:`.commands`) loads neither torch nor Gradio.
_EXPORTS = {
    "build_app": "app",
    "serve": "app",
    "DemoInputError": "limits",
    "Limits": "limits",
    "PUBLIC": "published",
    "publish": "published",
}

__all__ = ["PUBLIC", "DemoInputError", "Limits", "build_app", "publish", "serve"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"analoglab.demos.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
