"""What each view shows, as plain data and figures: the handlers of :mod:`.app` call these.

Pure functions over the engine's results and the cards (no Gradio here): the analog card as
Markdown, the fidelity table, the transfer board's rows, filters and charts (scores with their
intervals; a check's layer profiles on relative depth), the logit-lens heatmap and the norms
plot (matplotlib figures, built without pyplot so nothing is kept globally).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analoglab.demos.engine import Lens, Moved
from analoglab.demos.published import RowProfiles, TransferRow
from analoglab.models.card import AnalogCard

ALL = "all"
VERDICTS = {
    "transfers": "transfers",
    "partial": "transfers in part",
    "does_not_transfer": "does not transfer",
    "no_effect": "no effect on either",
    "inconclusive": "inconclusive",
}


def card_markdown(card: AnalogCard) -> str:
    """The analog card beside the analog picker: who made it, how big, how faithful."""
    a = card.architecture
    lines = [
        f"### {card.name}",
        f"An analog of **{card.frontier}**, released by **{card.lab}** on {card.release.date}.",
        "",
        f"- **Size**: {card.parameters:,} parameters, {card.parameter_ratio:.1%} of the "
        f"frontier's {card.frontier_parameters:,} ({a.layers} blocks × {a.hidden_size} wide, "
        f"{a.heads} heads, {a.model_type})",
    ]
    fid = card.fidelity
    if fid is None:
        lines.append("- **Fidelity**: not measured")
    else:
        lines.append(
            f"- **Fidelity**: picks the frontier's next token {fid.top1_agreement:.1%} of the "
            f"time; KL(frontier ‖ analog) {fid.kl:.3f} nats per token"
            + (
                ""
                if fid.cka is None
                else f"; its insides resemble the frontier's with CKA {fid.cka:.2f} (1: alike)"
            )
        )
        if fid.tasks:
            tasks = ", ".join(
                f"{task} {s.analog:.2f} · {s.frontier:.2f}" for task, s in sorted(fid.tasks.items())
            )
            lines.append(f"- **Task accuracy** (analog · frontier): {tasks}")
    lines.append(
        f"- **Distilled** with {card.distillation.method}, {card.distillation.steps:,} steps"
    )
    return "\n".join(lines) + "\n"


def fidelity_table(cards: Sequence[AnalogCard]) -> tuple[list[str], list[list[Any]]]:
    """The analogs' fidelity cards side by side: one row per analog."""
    tasks = sorted({t for c in cards if c.fidelity for t in c.fidelity.tasks})
    headers = ["analog", "lab", "frontier", "parameters", "size vs frontier"]
    headers += ["KL (nats/token)", "top-1 agreement", "CKA (inside alike)"]
    headers += [f"{t}: analog / frontier (same answer)" for t in tasks]
    rows: list[list[Any]] = []
    for c in cards:
        row: list[Any] = [
            c.name,
            c.lab,
            c.frontier,
            f"{c.parameters:,}",
            f"{c.parameter_ratio:.1%}",
        ]
        f = c.fidelity
        if f is None:
            row += ["—", "—", "—"] + ["—"] * len(tasks)
        else:
            row += [
                f"{f.kl:.3f}",
                f"{f.top1_agreement:.1%}",
                "—" if f.cka is None else f"{f.cka:.2f}",
            ]
            for t in tasks:
                s = f.tasks.get(t)
                same = "" if s is None or s.agreement is None else f" ({s.agreement:.0%})"
                row.append(f"{s.analog:.2f} / {s.frontier:.2f}{same}" if s else "—")
        rows.append(row)
    return headers, rows


BOARD_HEADERS = [
    "lab",
    "frontier",
    "analog",
    "method",
    "verdict",
    "transfer score (95% interval)",
    "parts",
    "MLflow run",
]


def board_rows(
    rows: Sequence[TransferRow], lab: str, frontier: str, method: str, verdict: str
) -> list[list[str]]:
    """The board's rows after the filters (``all`` lets everything through)."""
    out: list[list[str]] = []
    for r in shown(rows, lab, frontier, method, verdict):
        score = "—" if r.score is None else f"{r.score:.2f}"
        if r.low is not None and r.high is not None:
            score += f" [{r.low:.2f}, {r.high:.2f}]"
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in sorted(r.parts.items()))
        link = f"[{r.run_id[:8]}]({r.url})" if r.url else r.run_id[:8]
        out.append(
            [
                r.lab,
                r.frontier,
                r.analog,
                r.method,
                VERDICTS.get(r.verdict, r.verdict),
                score,
                parts,
                link,
            ]
        )
    return out


def board_filters(rows: Sequence[TransferRow]) -> dict[str, list[str]]:
    """The choices of each filter: ``all`` and the values present."""
    return {
        "lab": [ALL, *sorted({r.lab for r in rows})],
        "frontier": [ALL, *sorted({r.frontier for r in rows})],
        "method": [ALL, *sorted({r.method for r in rows})],
        "verdict": [ALL, *sorted({r.verdict for r in rows})],
    }


def row_label(row: TransferRow) -> str:
    """How a released check is named in the board's charts and its profile picker."""
    return f"{row.analog} → {row.frontier} · {row.method} ({row.run_id[:6]})"


def shown(
    rows: Sequence[TransferRow], lab: str, frontier: str, method: str, verdict: str
) -> list[TransferRow]:
    """The released checks the filters let through, in the board's order."""
    return [
        r
        for r in rows
        if all(
            want in (ALL, "", None) or have == want
            for want, have in (
                (lab, r.lab),
                (frontier, r.frontier),
                (method, r.method),
                (verdict, r.verdict),
            )
        )
    ]


#: Colours of the verdicts in the board's charts.
VERDICT_COLOURS = {
    "transfers": "#2a7d2a",
    "partial": "#c98a00",
    "inconclusive": "#7a7a7a",
    "does_not_transfer": "#b03030",
    "no_effect": "#5a5a9a",
}
MAX_CHART_ROWS = 30


def scores_figure(rows: Sequence[TransferRow]) -> Any:
    """Each shown check's transfer score with its 95% interval, coloured by verdict, against
    the cut-offs a verdict reads (0.3: partial, 0.6: transfers); its parts as small marks."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = list(rows)[:MAX_CHART_ROWS]
    fig = Figure(figsize=(7.5, max(1.8, 0.42 * len(rows) + 1.2)), dpi=100)
    ax = fig.subplots()
    for y, r in enumerate(rows):
        colour = VERDICT_COLOURS.get(r.verdict, "#333333")
        if r.low is not None and r.high is not None:
            ax.plot([r.low, r.high], [y, y], color=colour, linewidth=3, alpha=0.5)
        if r.score is not None:
            ax.plot([r.score], [y], "o", color=colour, markersize=7)
        for value in r.parts.values():
            if 0.0 <= value <= 1.0:
                ax.plot([value], [y + 0.22], "|", color="#555555", markersize=6)
    for cut, name in ((0.3, "partial"), (0.6, "transfers")):
        ax.axvline(cut, color="#999999", linestyle="--", linewidth=1)
        ax.text(cut, -0.9, name, fontsize=7, color="#666666", ha="center")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(len(rows) - 0.4, -1.2)
    ax.set_yticks(range(len(rows)), [row_label(r) for r in rows], fontsize=8)
    ax.set_xlabel("transfer score (dot) with its 95% interval (bar); parts as ticks above")
    used = sorted({r.verdict for r in rows})
    handles = [
        Line2D([], [], marker="o", linestyle="", color=VERDICT_COLOURS.get(v, "#333333"))
        for v in used
    ]
    if handles:
        ax.legend(
            handles,
            [VERDICTS.get(v, v) for v in used],
            fontsize=7,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
        )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


MAX_PROFILES = 4


def profiles_figure(found: RowProfiles) -> Any:
    """The analog's and the frontier's layer profiles of one check on one relative-depth axis
    (0: the first block, 1: the last), one panel per measured quantity."""
    from matplotlib.figure import Figure

    names = list(found.profiles)[:MAX_PROFILES]
    fig = Figure(figsize=(7.5, 2.6 * max(1, len(names))), dpi=100)
    axes = fig.subplots(max(1, len(names)), 1, squeeze=False)[:, 0]
    if not names:
        axes[0].text(0.5, 0.5, "this check logged no layer profile", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, name in zip(axes, names, strict=False):
        analog, frontier = found.profiles[name]
        for curve, label, style in (
            (analog, f"{found.row.analog} (analog)", "o-"),
            (frontier, f"{found.row.frontier} (frontier)", "s--"),
        ):
            ax.plot([p[0] for p in curve], [p[1] for p in curve], style, label=label)
            for depth, value, index in curve:
                ax.annotate(
                    str(index),
                    (depth, value),
                    fontsize=6,
                    xytext=(2, 3),
                    textcoords="offset points",
                )
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("relative depth (block index beside each point)", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def checked_sentence(row: TransferRow | None) -> str:
    if row is None:
        return "Not checked on the frontier yet: no released transfer check of this finding."
    verdict = VERDICTS.get(row.verdict, row.verdict)
    score = "" if row.score is None else f", transfer score {row.score:.2f}"
    return f"Checked on {row.frontier}: **{verdict}**{score}."


def lens_figure(lens: Lens) -> Any:
    """Top next token per block (rows) and position (columns), coloured by its probability."""
    from matplotlib.figure import Figure

    n_layers, n_pos = len(lens.top), len(lens.tokens)
    fig = Figure(figsize=(max(6.0, 0.75 * n_pos + 2), max(2.4, 0.6 * n_layers + 1.6)), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(lens.prob, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(lens.top):
        for j, token in enumerate(row):
            dark = lens.prob[i][j] > 0.55
            ax.text(
                j,
                i,
                token[:8],
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(n_pos), [t[:8] for t in lens.tokens], rotation=60, ha="right", fontsize=8)
    rows = [f"after block {i}" for i in range(n_layers)]
    rows[-1] += " (output)"
    ax.set_yticks(range(n_layers), rows, fontsize=8)
    ax.set_xlabel("the prompt, token by token (each column predicts the token after it)")
    fig.colorbar(image, ax=ax, label="probability of the top token")
    fig.tight_layout()
    return fig


def norms_figure(lens: Lens) -> Any:
    """Mean norm of the residual stream after each block."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 2.8), dpi=100)
    ax = fig.subplots()
    blocks = list(range(len(lens.norms)))
    ax.plot(blocks, lens.norms, marker="o")
    ax.set_xticks(blocks, [f"block {i}" for i in blocks])
    ax.set_ylabel("mean activation norm")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


MOVED_HEADERS = ["next token", "probability before", "after steering", "change"]


def moved_rows(moved: Sequence[Moved]) -> list[list[str]]:
    return [
        [m.token, f"{m.before:.3f}", f"{m.after:.3f}", f"{m.after - m.before:+.3f}"] for m in moved
    ]
