"""PNG plots of layer profiles: one per profile of a result, and analog against frontier.

The x axis is relative depth (0 = first block, 1 = last), the scale on which transfer compares
models of different depths; each point is a block. Figures are drawn with matplotlib's
object API on the Agg canvas, never through ``pyplot``: no global backend is switched and no
figure is left open in a notebook's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analoglab.experiments.result import LayerProfile

WIDTH, HEIGHT, DPI = 6.0, 3.6, 100


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("relative depth")
    ax.grid(True, alpha=0.3)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_profile(profile: LayerProfile, *, name: str, title: str, path: Path) -> Path:
    """One profile against relative depth, each point labelled with its block index."""
    fig, ax = _figure()
    ax.plot(profile.depths, profile.values, marker="o")
    for depth, value, index in zip(profile.depths, profile.values, profile.indices, strict=True):
        ax.annotate(
            str(index),
            (depth, value),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
            color="0.35",
        )
    ax.set_ylabel(name)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_overlay(
    profiles: Mapping[str, LayerProfile], *, name: str, title: str, path: Path
) -> Path:
    """Several models' profiles of one quantity on one relative-depth axis (label → profile)."""
    fig, ax = _figure()
    for label, profile in profiles.items():
        ax.plot(profile.depths, profile.values, marker="o", label=label)
    ax.set_ylabel(name)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
