"""Probing: how linearly decodable a label is from each layer's residual stream.

Examples and classes: labelled texts (their labels, renumbered 0..K−1 in sorted order);
choices (class = the index of the item's ``label`` among the sorted distinct labels); pairs
(positive texts class 1, negative texts class 0). Features: ``hook_resid_post`` at the last
token (``position="last"``) or the mean over real tokens (``"mean"``), per selected block,
standardised with the training split's mean and standard deviation.

The split is stratified and seeded: in each class a seeded permutation puts
``round(test_fraction · n_c)`` examples (at least 1, at most n_c − 1) into the test split.
``control="shuffled_labels"`` permutes the labels (seeded) before splitting: a probe should
then score near chance. Per layer and split an L2-regularised multinomial logistic
regression is fitted (:mod:`.logistic`: two-class fits by Newton's method, all of a probe's
layers and splits at once, and in batched execution pooled with the other probes of the
batch through the context, :meth:`~.common.Context.fit_binary`; other fits by L-BFGS).

Outputs: profiles ``accuracy`` (held-out, averaged over the splits) and ``train_accuracy``
(split 0); metrics ``accuracy`` (each split read at the layer the *other* splits chose,
averaged: :func:`held_out_layers`), ``chance`` (the majority class's share of the test
split, averaged over the splits), ``effect`` = (accuracy − chance) / (1 − chance),
``best_depth`` (the layer best on average), ``classes``, ``train_examples``,
``test_examples``. Transfer compares ``effect``, ``accuracy`` and the ``accuracy`` profiles.

Uncertainty (``result.bootstrap``): ``splits`` train/test splits are fitted (split ``k > 0``
is seeded by ``[seed, k]``, and with the shuffled-labels control draws its own shuffle).
Replicate ``b`` takes split ``b mod splits`` and resamples its test examples (each split
holds the same number per class), giving replicates of the ``accuracy`` profile, of
``accuracy`` and of ``effect`` (at the split's layer and with the split's chance, both held
fixed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from analoglab.experiments.methods.common import (
    Blocks,
    Context,
    ExperimentError,
    Outcome,
    Pass,
    concrete,
    masked_mean,
)
from analoglab.experiments.methods.logistic import (
    BinaryFits,
    fit_device,
    fit_logistic_many,
    newton_fits,
)
from analoglab.experiments.result import Replicates
from analoglab.experiments.spec import Choices, Data, Labelled, Pairs, ProbeSpec
from analoglab.experiments.uncertainty import make_replicates

MIN_PER_CLASS = 2


def examples_of(data: Data) -> tuple[list[str], list[int], list[str]]:
    """Texts, their classes 0..K−1, and each class's name."""
    d = concrete(data)
    if isinstance(d, Labelled):
        raw = [item.label for item in d.items]
        names = sorted(set(raw))
        index = {label: k for k, label in enumerate(names)}
        return [i.text for i in d.items], [index[r] for r in raw], [str(n) for n in names]
    if isinstance(d, Choices):
        missing = [k for k, item in enumerate(d.items) if item.label is None]
        if missing:
            raise ExperimentError(
                f"a probe on choices needs a label on every item; item {missing[0]} has none"
            )
        labels = [str(item.label) for item in d.items]
        names_s = sorted(set(labels))
        index_s = {label: k for k, label in enumerate(names_s)}
        return [i.prompt for i in d.items], [index_s[x] for x in labels], names_s
    if isinstance(d, Pairs):
        texts = [p.positive for p in d.pairs] + [p.negative for p in d.pairs]
        return texts, [1] * len(d.pairs) + [0] * len(d.pairs), ["negative", "positive"]
    raise ExperimentError(
        f"a probe needs labelled texts, choices with labels, or pairs, not {d.kind}"
    )


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int | list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: per class, a seeded permutation, ``test_fraction`` held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def run(spec: ProbeSpec, ctx: Context) -> Outcome:
    texts, classes, class_names = examples_of(spec.data)
    counts = np.bincount(np.asarray(classes), minlength=len(class_names))
    if len(class_names) < 2:
        raise ExperimentError(
            f"a probe needs at least 2 classes; the data has one ({class_names[0]!r})"
        )
    if counts.min() < MIN_PER_CLASS:
        small = class_names[int(counts.argmin())]
        raise ExperimentError(
            f"class {small!r} has {int(counts.min())} example(s); a probe needs at least "
            f"{MIN_PER_CLASS} per class (one to train on, one to test): add examples"
        )
    labels = np.asarray(classes)
    # each split: (its labels, train indices, test indices); the first is the spec's own
    splits = []
    for k in range(spec.splits):
        split_labels = labels
        if spec.control == "shuffled_labels":
            shuffle = [spec.seed, 1] if k == 0 else [spec.seed, 1, k]
            split_labels = labels[np.random.default_rng(shuffle).permutation(len(labels))]
        seed: int | list[int] = spec.seed if k == 0 else [spec.seed, k]
        splits.append((split_labels, *stratified_split(split_labels, spec.test_fraction, seed)))

    blocks = ctx.blocks(spec.layers)
    names = ctx.hook_names("hook_resid_post", blocks)
    chunks = ctx.chunks(texts)
    ctx.progress.plan(len(chunks) + len(names) * len(splits))
    parts: list[list[Tensor]] = [[] for _ in names]
    positions = (-1,) if spec.position == "last" else None
    with ctx.phase("features"):
        # through the context: alone a forward pass a chunk; batched, shared with other jobs'
        passes = (Pass(ctx.encode(c), capture=tuple(names), positions=positions) for c in chunks)
        for p, answer in ctx.stream(passes):
            for k, name in enumerate(names):
                x = answer.cache[name]
                feats = x[:, 0] if spec.position == "last" else masked_mean(x, p.enc.real)
                parts[k].append(feats.float())
            ctx.progress.step()

    n_classes = len(class_names)
    # correct[split][layer] = per test example, 1.0 where the probe is right
    correct = np.zeros((len(splits), len(names), len(splits[0][2])))
    train_accuracy = [0.0] * len(names)

    def by_lbfgs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return fit_logistic_many(x, y, n_classes, spec.l2)

    def by_newton(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return ctx.fit_binary(BinaryFits(x, y, spec.l2))

    with ctx.phase("fit"):
        # the standardised features of every (layer, split) whose fit is still to come
        pending: list[tuple[int, int, Tensor]] = []
        for k in range(len(names)):
            features = torch.cat(parts[k])
            parts[k] = []
            newton = newton_fits(features.shape[1], n_classes, spec.l2)
            on = torch.device("cpu") if newton else fit_device(features.numel(), features.device)
            features = features.to(on)
            for j, (_, train_idx, _) in enumerate(splits):
                tr = torch.as_tensor(train_idx, device=on)
                mu, sd = features[tr].mean(0), features[tr].std(0, unbiased=False)
                sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
                pending.append((k, j, (features - mu) / sd))
                if not newton:  # fitted one at a time, each as it comes
                    _score_fits(pending, splits, by_lbfgs, correct, train_accuracy)
                    ctx.progress.step()
                    pending = []
        if pending:  # every layer's and split's fit at once, by Newton's method
            _score_fits(pending, splits, by_newton, correct, train_accuracy)
            ctx.progress.step(len(pending))

    return outcome_of(ctx, blocks, splits, correct, train_accuracy, n_classes)


def _score_fits(
    fits: list[tuple[int, int, Tensor]],
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    fit: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    correct: np.ndarray,
    train_accuracy: list[float],
) -> None:
    """Fit the probes of ``fits`` (layer, split, standardised features; every split holds the
    same number of training examples) with ``fit`` (stacked training features and classes to
    weights and biases) and score them: ``correct[split, layer]`` per test example, and split
    0's training accuracy per layer."""
    device = fits[0][2].device
    ys = [torch.as_tensor(splits[j][0], device=device) for _, j, _ in fits]
    trs = [torch.as_tensor(splits[j][1], device=device) for _, j, _ in fits]
    x_train = torch.stack([x[tr] for (_, _, x), tr in zip(fits, trs, strict=True)])
    y_train = torch.stack([y[tr] for y, tr in zip(ys, trs, strict=True)])
    w, b = fit(x_train, y_train)
    for f, (k, j, x) in enumerate(fits):
        _, train_idx, test_idx = splits[j]
        y, te = ys[f], torch.as_tensor(test_idx, device=device)
        pred = (x @ w[f] + b[f]).argmax(-1)
        correct[j, k] = (pred[te] == y[te]).double().cpu().numpy()
        if j == 0:
            train_accuracy[k] = int((pred[trs[f]] == y[trs[f]]).sum()) / len(train_idx)


def outcome_of(
    ctx: Context,
    blocks: Blocks,
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    correct: np.ndarray,
    train_accuracy: list[float],
    n_classes: int,
) -> Outcome:
    """The probe's outcome from its fits: ``splits`` (each split's labels, train and test
    indices), ``correct`` ``[split, layer, test example]`` and split 0's training accuracy
    per layer (the module docstring says what each output is)."""
    _, train_idx, test_idx = splits[0]
    per_split = correct.mean(axis=2)  # [split, layer]
    accuracy = per_split.mean(axis=0).tolist()
    layers = held_out_layers(per_split)
    chances = [_chance(lab[test], n_classes) for lab, _, test in splits]
    held = float(np.mean([per_split[k, layers[k]] for k in range(len(splits))]))
    chance = float(np.mean(chances))
    best = int(np.argmax(accuracy))
    return Outcome(
        metrics={
            "accuracy": held,
            "chance": chance,
            "effect": (held - chance) / (1.0 - chance) if chance < 1.0 else 0.0,
            "best_depth": blocks.depths[best],
            "classes": float(n_classes),
            "train_examples": float(len(train_idx)),
            "test_examples": float(len(test_idx)),
        },
        profiles={
            "accuracy": blocks.profile(accuracy),
            "train_accuracy": blocks.profile(train_accuracy),
        },
        bootstrap=_replicates(
            ctx, correct, [lab[test] for lab, _, test in splits], n_classes, layers
        ),
    )


def held_out_layers(per_split: np.ndarray) -> list[int]:
    """For each split ``k``, the layer whose accuracy averaged over the *other* splits is
    highest (the first on ties; with one split, its own best). Reading split ``k``'s accuracy
    at a layer chosen without it keeps the choice from picking the luckiest test set: the
    largest of several noisy accuracies is biased upward, most visibly for a control at
    chance."""
    n_splits = per_split.shape[0]
    if n_splits == 1:
        return [int(np.argmax(per_split[0]))]
    total = per_split.sum(axis=0)
    return [int(np.argmax((total - per_split[k]) / (n_splits - 1))) for k in range(n_splits)]


def _chance(labels: np.ndarray, n_classes: int) -> float:
    counts = np.bincount(labels, minlength=n_classes)
    return float(counts.max() / counts.sum())


def _replicates(
    ctx: Context,
    correct: np.ndarray,
    test_labels: list[np.ndarray],
    n_classes: int,
    layers: list[int],
) -> Replicates:
    """Replicates of the accuracy profile, the accuracy and the effect: ``correct`` is
    ``[split, layer, test example]``, ``test_labels`` each split's test labels, ``layers``
    the layer each split is read at (:func:`held_out_layers`, held fixed)."""
    n_test = correct.shape[2]
    weights = ctx.weights(n_test, "test")
    resamples = weights.shape[0]
    split = np.arange(resamples) % correct.shape[0]
    # accuracy of each layer under each resample of its replicate's split: [B, L]
    accuracy = np.einsum("bn,bln->bl", weights, correct[split])
    # chance is the design's: the majority share of the split's test set, as for the point
    # estimate (the larger class share of each resample would be biased upward: the maximum
    # of shares that vary around it)
    chances = np.asarray([_chance(labels, n_classes) for labels in test_labels])
    chance = chances[split]
    held = accuracy[np.arange(resamples), np.asarray(layers)[split]]
    headroom = 1.0 - chance
    usable = headroom > 1e-12
    effect = np.where(usable, (held - chance) / np.where(usable, headroom, 1.0), 0.0)
    return make_replicates(
        resamples=resamples,
        seed=ctx.bootstrap_seed,
        items={"test": n_test},
        metrics={"accuracy": held, "effect": effect},
        profiles={"accuracy": accuracy},
    )
