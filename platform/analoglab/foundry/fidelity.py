"""Measures of how faithful an analog is to its frontier, and of what each model can do.

- next-token KL(frontier ‖ analog) and top-1 agreement on held-out text, per token (the KL
  also apart on the positions whose next token can only be copied from context);
- representation similarity: linear CKA between the analog's and the frontier's residual
  streams at matched relative depths (:func:`~analoglab.foundry.training.matched_depths`),
  over every position of the held-out windows;
- accuracy on each choice task set: the share of items where the model gives the target's
  first token a higher logit than the foil's; and behaviour agreement: the share of items
  where analog and frontier choose the same answer, right or wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analoglab.foundry.tasks import ChoiceItem
from analoglab.models.tokencache import encode_texts


@torch.no_grad()
def next_token_agreement(
    frontier: torch.nn.Module,
    analog: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 32,
    max_windows: int = 128,
    device: torch.device | None = None,
    copyable: Mapping[int, str] | None = None,
    bos: int | None = None,
) -> dict[str, float]:
    """KL(frontier‖analog) and top-1 agreement per token over consecutive held-out windows.

    With ``copyable`` (token id → the word it spells, e.g. the toy world's names with and
    without their leading space), the KL is also split between the positions whose next
    token is one of them, its word already seen in its document
    (:func:`copied_positions`: predicting it takes copying from context) and the others:
    ``kl_copied``, ``kl_other`` (each a mean over its positions) and ``copied_share``."""
    device = device or next(frontier.parameters()).device
    n_windows = min(max_windows, len(tokens) // seq_len)
    windows = torch.from_numpy(
        tokens[: n_windows * seq_len].astype(np.int64).reshape(n_windows, seq_len)
    )
    kl_sum, agree, count = 0.0, 0.0, 0
    split: dict[str, list[float]] = {"copied": [0.0, 0.0], "other": [0.0, 0.0]}
    for i in range(0, n_windows, batch_size):
        x = windows[i : i + batch_size].to(device)
        lf, la = frontier(input_ids=x).logits, analog(input_ids=x).logits
        kl, top1, n = token_agreement(lf, la)
        kl_sum, agree, count = kl_sum + kl, agree + top1, count + n
        if copyable is not None:
            copied = copied_positions(x, copyable, bos)
            for name, mask in (("copied", copied), ("other", ~copied)):
                part, _, n_part = token_agreement(lf, la, mask)
                split[name][0] += part
                split[name][1] += n_part
    out = {"kl": kl_sum / count, "top1_agreement": agree / count, "tokens": float(count)}
    if copyable is not None:
        for name, (total, positions) in split.items():
            out[f"kl_{name}"] = total / positions if positions else 0.0
        out["copied_share"] = split["copied"][1] / count
    return out


def copied_positions(x: torch.Tensor, copyable: Mapping[int, str], bos: int | None) -> torch.Tensor:
    """``[batch, seq]`` booleans: True at a position whose next token is in ``copyable`` and
    whose word (``copyable``'s value: ``Sam`` and `` Sam`` are one name) already occurred
    earlier in the same document (since the last ``bos`` in the window, or the window's
    start). The window's last position has no next token: False."""
    rows = x.tolist()
    out = torch.zeros(x.shape, dtype=torch.bool)
    for b, row in enumerate(rows):
        seen: set[str] = set()
        for t, token in enumerate(row):
            if bos is not None and token == bos:
                seen = set()
            if token in copyable:
                seen.add(copyable[token])
            if t + 1 < len(row) and copyable.get(row[t + 1]) in seen:
                out[b, t] = True
    return out.to(x.device)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) between two representations of the same ``n``
    examples, ``x`` ``[n, d1]`` and ``y`` ``[n, d2]``: ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` on
    centred columns. 1 for the same representation up to an orthogonal transform and an
    isotropic scaling; near 0 for unrelated ones."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if float(norm) > 0 else 0.0


@torch.no_grad()
def representation_similarity(
    frontier: torch.nn.Module,
    analog: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    pairs: Sequence[tuple[int, int]],
    max_windows: int = 128,
    device: torch.device | None = None,
) -> list[float]:
    """Linear CKA of the residual stream after analog block ``j`` and frontier block ``k``,
    for each ``(j, k)`` in ``pairs``, over every position of consecutive held-out windows."""
    device = device or next(frontier.parameters()).device
    n_windows = min(max_windows, len(tokens) // seq_len)
    x = torch.from_numpy(
        tokens[: n_windows * seq_len].astype(np.int64).reshape(n_windows, seq_len)
    ).to(device)
    hf = frontier(input_ids=x, output_hidden_states=True).hidden_states
    ha = analog(input_ids=x, output_hidden_states=True).hidden_states
    return [
        linear_cka(
            ha[j + 1].reshape(-1, ha[j + 1].size(-1)), hf[k + 1].reshape(-1, hf[k + 1].size(-1))
        )
        for j, k in pairs
    ]


def token_agreement(
    frontier_logits: torch.Tensor, analog_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[float, float, int]:
    """Sums over positions (``mask``: only where True): KL(frontier‖analog) of the next-token
    distributions, the number of positions where both rank the same token first, the count.

    Logits are ``[..., vocab]``; ``mask`` has their shape without the vocabulary axis.
    """
    lf = F.log_softmax(frontier_logits.float(), -1)
    la = F.log_softmax(analog_logits.float(), -1)
    if mask is not None:
        lf, la = lf[mask], la[mask]
    kl = float((lf.exp() * (lf - la)).sum(-1).sum())
    agree = float((lf.argmax(-1) == la.argmax(-1)).sum())
    return kl, agree, int(lf.numel() // max(lf.shape[-1], 1))


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token of each word, encoded as it follows other text (no BOS); each distinct
    word is encoded once (a set's answers repeat a few words)."""
    distinct = list(dict.fromkeys(words))
    if not distinct:
        return []
    ids = encode_texts(tokenizer, distinct, add_special_tokens=False)
    first = {w: row[0] for w, row in zip(distinct, ids, strict=True)}
    return [first[w] for w in words]


def choice_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ChoiceItem], batch_size: int = 64
) -> float:
    """Share of items where the model prefers the target's first token to the foil's."""
    chosen = choices(model, tokenizer, items, batch_size)
    return sum(chosen) / len(chosen)


def behaviour_agreement(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Share of items where two models made the same choice (both right or both wrong), from
    their :func:`choices` on the same items."""
    if len(a) != len(b) or not a:
        raise ValueError("behaviour agreement needs the two models' choices on the same items")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@torch.no_grad()
def choices(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[ChoiceItem], batch_size: int = 64
) -> list[bool]:
    """Per item, whether the model prefers the target's first token to the foil's."""
    device = next(model.parameters()).device
    out: list[bool] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        enc = tokenizer([it.prompt for it in chunk], return_tensors="pt", padding=True)
        logits = model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        ).logits[:, -1]
        t = torch.tensor(first_token_ids(tokenizer, [it.target for it in chunk]), device=device)
        f = torch.tensor(first_token_ids(tokenizer, [it.foil for it in chunk]), device=device)
        rows = torch.arange(len(chunk), device=device)
        out += (logits[rows, t] > logits[rows, f]).tolist()
    return out
