"""What each view shows, as plain data and figures: the handlers of :mod:`.app` call these.

Pure functions over the engine's results and the cards (no Gradio here): the analog card as
Markdown, the fidelity table, the transfer board's rows and filters, the logit-lens heatmap
and the norms plot (matplotlib figures, built without pyplot so nothing is kept globally).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analoglab.demos.engine import Lens, Moved
from analoglab.demos.published import TransferRow
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
    headers += ["KL (nats/token)", "top-1 agreement"]
    headers += [f"{t}: analog / frontier" for t in tasks]
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
            row += ["—", "—"] + ["—"] * len(tasks)
        else:
            row += [f"{f.kl:.3f}", f"{f.top1_agreement:.1%}"]
            for t in tasks:
                s = f.tasks.get(t)
                row.append(f"{s.analog:.2f} / {s.frontier:.2f}" if s else "—")
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
    for r in rows:
        if any(
            want not in (ALL, "", None) and have != want
            for want, have in (
                (lab, r.lab),
                (frontier, r.frontier),
                (method, r.method),
                (verdict, r.verdict),
            )
        ):
            continue
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
