"""Probing: how linearly decodable a label is from each layer's residual stream.

Examples and classes: labelled texts (their labels, renumbered 0..K−1 in sorted order);
choices (class = the index of the item's ``label`` among the sorted distinct labels); pairs
(positive texts class 1, negative texts class 0). Features: ``hook_resid_post`` at the last
token (``position="last"``) or the mean over real tokens (``"mean"``), per selected block,
standardised with the training split's mean and standard deviation.

The split is stratified and seeded: in each class a seeded permutation puts
``round(test_fraction · n_c)`` examples (at least 1, at most n_c − 1) into the test split.
``control="shuffled_labels"`` permutes the labels (seeded) before splitting: a probe should
then score near chance. Per layer and split a multinomial logistic regression is fitted,
full batch, from zero weights (deterministic), minimising

    mean cross-entropy + (l2 / 2) · ‖W‖²

(the bias unpenalised). With two classes, ``l2 > 0`` and features at most
:data:`NEWTON_MAX_WIDTH` wide, all of a probe's fits (every layer and split) are solved at
once by Newton's method with a backtracking line search, in float64 on the CPU
(:func:`fit_logistic_many`). Two-class softmax regression with both weight columns penalised
has its minimum at ``W = [−v/2, v/2]``, ``b = [−c/2, c/2]`` where ``(v, c)`` minimises the
binary logistic loss ``mean softplus(−s (x·v + c)) + (l2/4)‖v‖²`` (``s = ±1``): strictly
convex, with a ``(d+1)``-square Hessian, so Newton reaches the minimum to
:data:`NEWTON_GRAD_TOL` in about ten steps, where L-BFGS took up to 200 one fit at a time
(the fits were most of a probe's time). Otherwise (``l2 = 0``, where separable data has no
minimum; three or more classes; wide features) each fit runs L-BFGS in float32
(:func:`fit_logistic`), on the CPU when a layer's features hold at most
:data:`CPU_FIT_VALUES` numbers (a small fit's line searches read a number back at every step,
which on an accelerator costs a synchronisation each), else on the model's device.

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

import numpy as np
import torch
import torch.nn.functional as F
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
from analoglab.experiments.result import Replicates
from analoglab.experiments.spec import Choices, Data, Labelled, Pairs, ProbeSpec
from analoglab.experiments.uncertainty import make_replicates

MIN_PER_CLASS = 2
LBFGS_STEPS = 200
#: Newton's method fits two-class problems of features at most this wide.
NEWTON_MAX_WIDTH = 1024
#: ... and stacks at most this many bytes of Hessians at once (fits beyond it run in turns).
NEWTON_MAX_BYTES = 256 << 20
#: A Newton fit stops when its gradient's largest entry is below this, ...
NEWTON_GRAD_TOL = 1e-9
#: ... or after this many steps.
NEWTON_STEPS = 100
#: Features of at most this many numbers (examples × width) are fitted on the CPU.
CPU_FIT_VALUES = 1 << 22


def fit_device(values: int, device: torch.device | str) -> torch.device:
    """Where a probe with ``values`` feature numbers is fitted: the CPU for small fits
    (launch- and sync-bound on an accelerator), else ``device``."""
    return torch.device("cpu") if values <= CPU_FIT_VALUES else torch.device(device)


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


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, l2: float) -> tuple[Tensor, Tensor]:
    """Weights ``[d, K]`` and bias ``[K]`` of an L2-regularised multinomial logistic regression."""
    w = torch.zeros(x.shape[1], n_classes, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=LBFGS_STEPS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def newton_fits(width: int, n_classes: int, l2: float) -> bool:
    """Whether :func:`fit_logistic_many` solves a fit of this size by Newton's method: two
    classes, a penalty, and features at most :data:`NEWTON_MAX_WIDTH` wide."""
    return n_classes == 2 and l2 > 0 and width <= NEWTON_MAX_WIDTH


def fit_logistic_many(
    x: Tensor, y: Tensor, n_classes: int, l2: float
) -> tuple[Tensor, Tensor]:
    """Fit ``F`` L2-regularised multinomial logistic regressions at once: features ``x``
    ``[F, n, d]``, classes ``y`` ``[F, n]``; weights ``[F, d, K]`` and biases ``[F, K]`` in
    ``x``'s dtype, on ``x``'s device. By Newton's method in float64 on the CPU where
    :func:`newton_fits` (every fit its own step size; a fit that has converged stays put, so a
    fit's weights do not depend on which other fits share the call), else one L-BFGS fit
    after another."""
    n_fits, n, d = x.shape
    if not newton_fits(d, n_classes, l2):
        fits = [fit_logistic(x[f], y[f], n_classes, l2) for f in range(n_fits)]
        return torch.stack([w for w, _ in fits]), torch.stack([b for _, b in fits])
    per_call = max(1, NEWTON_MAX_BYTES // (8 * (3 * (d + 1) ** 2 + 4 * n * (d + 1))))
    ws, bs = [], []
    for start in range(0, n_fits, per_call):
        v, c = _newton_binary(
            x[start : start + per_call].detach().to("cpu", torch.float64),
            y[start : start + per_call].to("cpu"),
            l2 / 2,
        )
        # the two-class softmax regression's minimum from the binary one's (module docstring)
        ws.append(torch.stack([-v / 2, v / 2], dim=2))
        bs.append(torch.stack([-c / 2, c / 2], dim=1))
    return torch.cat(ws).to(x), torch.cat(bs).to(x)


def _newton_binary(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Minimise ``mean softplus(-s_i (x_i · v + c)) + (lam / 2) ‖v‖²`` (``s_i = ±1`` for
    class 1 / 0) by Newton's method with Armijo backtracking, for ``F`` problems at once
    (float64, CPU): ``v`` ``[F, d]`` and ``c`` ``[F]``. The objective is strictly convex, so
    its minimum is unique; the Hessian ``X̃ᵀ diag(σ(1−σ)) X̃ / n + lam·diag(1, …, 1, 0)`` is
    positive definite (a tiny ridge guards the bias against saturation)."""
    n_fits, n, d = x.shape
    xt = torch.cat([x, torch.ones(n_fits, n, 1, dtype=x.dtype)], dim=2)  # [F, n, d+1]
    target = y.to(x.dtype)
    sign = 2 * target - 1
    penalty = torch.full((d + 1,), lam, dtype=x.dtype)
    penalty[d] = 0.0
    diag = torch.diag(penalty + torch.where(penalty > 0, 0.0, 1e-12))
    theta = torch.zeros(n_fits, d + 1, dtype=x.dtype)

    def objective(th: Tensor) -> Tensor:
        margin = sign * (xt @ th.unsqueeze(2)).squeeze(2)
        return F.softplus(-margin).mean(1) + 0.5 * (penalty * th * th).sum(1)

    loss = objective(theta)
    active = torch.ones(n_fits, dtype=torch.bool)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid((xt @ theta.unsqueeze(2)).squeeze(2))  # [F, n]
        grad = (xt.transpose(1, 2) @ (p - target).unsqueeze(2)).squeeze(2) / n + penalty * theta
        active &= grad.abs().amax(1) > NEWTON_GRAD_TOL
        if not bool(active.any()):
            break
        hess = (xt * (p * (1 - p)).unsqueeze(2)).transpose(1, 2) @ xt / n + diag
        chol, info = torch.linalg.cholesky_ex(hess)
        if bool((info == 0).all()):
            step = -torch.cholesky_solve(grad.unsqueeze(2), chol).squeeze(2)
        else:
            step = -torch.linalg.lstsq(hess, grad.unsqueeze(2)).solution.squeeze(2)
        step = torch.where(active[:, None], step, torch.zeros_like(step))
        slope = (grad * step).sum(1)  # negative where a fit moves
        t = torch.ones(n_fits, dtype=x.dtype)
        for _ in range(40):  # Armijo backtracking, every fit its own step size
            trial_loss = objective(theta + t[:, None] * step)
            ok = (trial_loss <= loss + 1e-4 * t * slope) | ~active
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        theta = theta + t[:, None] * step
        loss = objective(theta)
    return theta[:, :d], theta[:, d]


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
        for chunk in chunks:
            enc = ctx.encode(chunk)
            # through the context: alone one forward pass; batched, shared with other jobs'
            cache = ctx.run_pass(Pass(enc, capture=tuple(names), positions=positions)).cache
            for k, name in enumerate(names):
                x = cache[name]
                feats = x[:, 0] if spec.position == "last" else masked_mean(x, enc.real)
                parts[k].append(feats.float())
            ctx.progress.step()

    n_classes = len(class_names)
    # correct[split][layer] = per test example, 1.0 where the probe is right
    correct = np.zeros((len(splits), len(names), len(splits[0][2])))
    train_accuracy = [0.0] * len(names)
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
                    _score_fits(pending, splits, n_classes, spec.l2, correct, train_accuracy)
                    ctx.progress.step()
                    pending = []
        if pending:  # every layer's and split's fit at once, by Newton's method
            _score_fits(pending, splits, n_classes, spec.l2, correct, train_accuracy)
            ctx.progress.step(len(pending))

    return outcome_of(ctx, blocks, splits, correct, train_accuracy, n_classes)


def _score_fits(
    fits: list[tuple[int, int, Tensor]],
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_classes: int,
    l2: float,
    correct: np.ndarray,
    train_accuracy: list[float],
) -> None:
    """Fit the probes of ``fits`` (layer, split, standardised features; every split holds the
    same number of training examples) and score them: ``correct[split, layer]`` per test
    example, and split 0's training accuracy per layer."""
    device = fits[0][2].device
    ys = [torch.as_tensor(splits[j][0], device=device) for _, j, _ in fits]
    trs = [torch.as_tensor(splits[j][1], device=device) for _, j, _ in fits]
    x_train = torch.stack([x[tr] for (_, _, x), tr in zip(fits, trs, strict=True)])
    y_train = torch.stack([y[tr] for y, tr in zip(ys, trs, strict=True)])
    w, b = fit_logistic_many(x_train, y_train, n_classes, l2)
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
