"""Mapped interventions: an analog's artifact carried to the frontier through a residual map.

The spec carries the artifact inline (``spec.artifact``: a steering vector or a probe
direction of the analog's width, found at a relative depth). Where it runs:

- **on its own analog** (the loaded model's name is ``artifact.analog``, no map given): the
  artifact as it is (the identity map) at the analog's block of its depth; the same metrics,
  against the analog's own native vector or probe and random directions (``map_r2`` 1);
- **on the frontier**: through the lab's :class:`~analoglab.experiments.mapping.ResidualMap`
  between that analog and this model (``run(..., residual_map=...)``), fitted at the lab site.
  The artifact must be of the map's analog width at its depth, the map of this model's
  weights, and, where the artifact names the analog weights it was found on
  (``artifact.analog_sha256``), the map fitted on those; else the run is refused.

**mapped_steering.** At the frontier block of the artifact's depth, three vectors are added
(at ``scale``, every position or the last): the mapped vector ``v_f = v_a W``; the *native*
frontier vector (mean ``hook_resid_post`` at the last token of the positive contrast texts
minus that of the negative ones, as :mod:`.steering` computes it); and ``random_draws``
random directions of ‖v_f‖ (a control). With the behaviour score and swing of
:mod:`.steering`, each effect is ``(score − score_unsteered) / max(|swing|, 0.5)``.
Metrics: ``effect`` (the mapped vector's), ``native_effect``, ``random_effect`` (the first
draw's), ``ratio_to_native`` and ``random_ratio`` (over ``native_effect``; 0 where it is 0),
``cosine_to_native``, ``mapped_norm``, ``native_norm``, ``map_r2`` (the map's held-out R²
there), ``swing``, ``unsteered_score``, and with ``neutral`` prompts ``perplexity_ratio`` and
``native_perplexity_ratio``: exp of the change (steered minus unsteered) in the mean
next-token NLL on the neutral texts, where the steering acts — over every token with
``position="all"``; with ``"last"``, of each text's last token given the text before it, the
vector added at that prefix's last position (see :func:`_neutral_nll`).

**mapped_probe.** Two classes only. Features: ``hook_resid_post`` at the artifact's frontier
block (last token or mean), on a stratified seeded split. The mapped direction ``w_f = M w_a``
and each of ``random_draws`` random directions of ‖w_f‖ classify by ``x · w`` against the
midpoint of the two classes' mean scores on the training split (oriented by them); the
native probe is the logistic regression of :mod:`.probe` fitted on the training split.
Metrics: ``accuracy`` (mapped), ``native_accuracy``, ``random_accuracy``, ``chance``, and
``effect`` / ``native_effect`` / ``random_effect`` = (accuracy − chance) / (1 − chance),
``ratio_to_native``, ``random_ratio`` (over ``native_effect``; 0 where it is 0), ``map_r2``.

Uncertainty (``result.bootstrap``): replicates of the effects and ratios (and accuracies),
resampling the ``evaluate`` prompts and contrast pairs (steering) or the test examples
(probe); replicate ``b`` uses random direction ``b mod random_draws``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analoglab.experiments.mapping import LayerMap, MapError
from analoglab.experiments.methods.common import (
    Context,
    Encoded,
    ExperimentError,
    Outcome,
    encode_rows,
    forward,
    masked_mean,
    token_ids,
)
from analoglab.experiments.methods.logistic import fit_logistic_many
from analoglab.experiments.methods.probe import examples_of, stratified_split
from analoglab.experiments.methods.steering import SWING_FLOOR, behaviour_data
from analoglab.experiments.spec import (
    MAPPED_RANDOM_DRAWS,
    Artifact,
    MappedProbeSpec,
    MappedSteeringSpec,
)
from analoglab.experiments.uncertainty import make_replicates
from analoglab.interventions import add_vector, block_at_depth, capture

RANDOM_DRAWS = MAPPED_RANDOM_DRAWS


@dataclass(frozen=True)
class Carrier:
    """How the artifact reaches the model run: through the lab's map at one depth
    (``layer``), or as it is, on the analog it was found on (``layer`` None: the identity)."""

    block: int
    layer: LayerMap | None

    @property
    def r2_forward(self) -> float:
        return 1.0 if self.layer is None else self.layer.r2_forward

    @property
    def r2_backward(self) -> float:
        return 1.0 if self.layer is None else self.layer.r2_backward

    def steering_vector(self, values: list[float]) -> np.ndarray:
        if self.layer is None:
            return np.asarray(values, np.float64)
        return self.layer.steering_vector(values)

    def probe_direction(self, values: list[float]) -> np.ndarray:
        if self.layer is None:
            return np.asarray(values, np.float64)
        return self.layer.probe_direction(values)


def layer_map(ctx: Context, artifact: Artifact, method: str) -> Carrier:
    """How the artifact goes onto this model, after every check that it fits: as it is on the
    analog named by ``artifact.analog`` (no map given), else through the residual map."""
    rmap = ctx.residual_map
    if rmap is None and artifact.analog == ctx.loaded.name:
        return own_analog(ctx, artifact)
    if rmap is None:
        raise ExperimentError(
            f"{method} needs the lab's residual map between {artifact.analog} and "
            f"{ctx.loaded.name}: fit one at the lab site and pass residual_map= to run (on "
            f"the analog itself no map is needed: load it as {artifact.analog})"
        )
    if rmap.analog != artifact.analog:
        raise ExperimentError(
            f"the artifact was found on {artifact.analog}, the residual map is of "
            f"{rmap.analog}: use the map of the artifact's analog"
        )
    if artifact.analog_sha256 is not None and artifact.analog_sha256 != (
        rmap.analog_weights_sha256
    ):
        raise ExperimentError(
            f"the artifact was found on {artifact.analog} weights "
            f"{artifact.analog_sha256[:12]}, the residual map was fitted on "
            f"{rmap.analog_weights_sha256[:12]}: fit the map on the weights the artifact "
            "was found on (or find the artifact again on the map's analog)"
        )
    if rmap.frontier_weights_sha256 != ctx.loaded.weights_sha256:
        raise ExperimentError(
            f"the residual map was fitted on other weights than {ctx.loaded.name}'s "
            f"({rmap.frontier_weights_sha256[:12]}): fit it again on this model"
        )
    try:
        layer = rmap.at(artifact.depth)
    except MapError as exc:
        raise ExperimentError(str(exc)) from None
    if artifact.width != layer.analog_width:
        raise ExperimentError(
            f"the artifact is {artifact.width} wide; {artifact.analog}'s residual stream at "
            f"depth {artifact.depth:g} is {layer.analog_width} wide (the map's): carry a "
            "vector of the analog's width, found at that depth"
        )
    expected = block_at_depth(artifact.depth, ctx.layout.n_layers)
    if layer.frontier_block != expected or layer.frontier_width != ctx.layout.d_model:
        raise ExperimentError(
            f"the residual map's frontier side (block {layer.frontier_block}, width "
            f"{layer.frontier_width}) does not match {ctx.loaded.name} (block {expected} at "
            f"depth {artifact.depth:g}, width {ctx.layout.d_model})"
        )
    return Carrier(block=layer.frontier_block, layer=layer)


def own_analog(ctx: Context, artifact: Artifact) -> Carrier:
    """The artifact on the analog it was found on: applied as it is (the identity map) at
    the analog's block of its depth, after checking its weights and width."""
    if artifact.analog_sha256 is not None and artifact.analog_sha256 != (ctx.loaded.weights_sha256):
        raise ExperimentError(
            f"the artifact was found on {artifact.analog} weights {artifact.analog_sha256[:12]}"
            f", and {ctx.loaded.name} here has weights {ctx.loaded.weights_sha256[:12]}: run "
            "it on the weights it was found on"
        )
    if artifact.width != ctx.layout.d_model:
        raise ExperimentError(
            f"the artifact is {artifact.width} wide; {ctx.loaded.name}'s residual stream is "
            f"{ctx.layout.d_model} wide: carry a vector of the analog's width"
        )
    return Carrier(block=block_at_depth(artifact.depth, ctx.layout.n_layers), layer=None)


def random_directions(norm: float, width: int, seed: int, draws: int) -> list[Tensor]:
    """Seeded Gaussian directions of the given norm."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        noise = torch.randn(width, generator=gen)
        out.append(noise / noise.norm() * norm)
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    safe = np.where(np.abs(b) > 1e-9, b, 1.0)
    ratio: np.ndarray = np.where(np.abs(b) > 1e-9, a / safe, 0.0)
    return ratio


# -- mapped steering --------------------------------------------------------------------------


def run_steering(spec: MappedSteeringSpec, ctx: Context) -> Outcome:
    layer = layer_map(ctx, spec.artifact, "mapped_steering")
    pairs, prompts, neutral, target, foil = behaviour_data(spec, ctx)
    name = ctx.layout.hook_name("hook_resid_post", block=layer.block)
    positions = [-1] if spec.position == "last" else None

    def score(enc: Encoded) -> np.ndarray:
        logits = forward(ctx.model, enc)
        diffs: np.ndarray = (logits[:, target] - logits[:, foil]).double().cpu().numpy()
        return diffs

    positives = [p.positive for p in pairs]
    negatives = [p.negative for p in pairs]
    ctx.progress.plan(
        len(ctx.chunks(positives)) * 2
        + len(ctx.chunks(prompts)) * (3 + RANDOM_DRAWS)
        + len(ctx.chunks(neutral)) * 3
    )
    means, side = [], []
    with ctx.phase("vectors"):
        for texts in (positives, negatives):
            total = torch.zeros(ctx.layout.d_model, dtype=torch.float64, device=ctx.device)
            per_text: list[np.ndarray] = []
            for chunk in ctx.chunks(texts):
                enc = ctx.encode(chunk)
                with capture(ctx.model, [name], positions=[-1]) as cache:
                    per_text.append(score(enc))
                total += cache[name][:, 0].double().sum(0)
                ctx.progress.step()
            means.append(total / len(texts))
            side.append(np.concatenate(per_text))
    native = (means[0] - means[1]).float()
    pair_diffs = side[0] - side[1]
    mapped = torch.as_tensor(layer.steering_vector(spec.artifact.values), dtype=torch.float32)
    mapped = mapped.to(ctx.device)
    randoms = [
        v.to(ctx.device)
        for v in random_directions(
            float(mapped.norm()), ctx.layout.d_model, spec.seed, RANDOM_DRAWS
        )
    ]
    vectors = [mapped, native, *randoms]

    base = np.zeros(len(prompts))
    steered = np.zeros((len(vectors), len(prompts)))
    with ctx.phase("steer"):
        start = 0
        for chunk in ctx.chunks(prompts):
            rows = slice(start, start + len(chunk))
            start += len(chunk)
            enc = ctx.encode(chunk)
            base[rows] = score(enc)
            ctx.progress.step()
            for k, vector in enumerate(vectors):
                with add_vector(ctx.model, name, vector, scale=spec.scale, positions=positions):
                    steered[k, rows] = score(enc)
                ctx.progress.step()

    swing = float(pair_diffs.mean())
    denom = max(abs(swing), SWING_FLOOR)
    effects = (steered.mean(axis=1) - base.mean()) / denom
    metrics = {
        "effect": float(effects[0]),
        "native_effect": float(effects[1]),
        "random_effect": float(effects[2]),
        "ratio_to_native": float(_ratio(effects[:1], effects[1:2])[0]),
        "random_ratio": float(_ratio(effects[2:3], effects[1:2])[0]),
        "cosine_to_native": float(F.cosine_similarity(mapped, native, dim=0)),
        "mapped_norm": float(mapped.norm()),
        "native_norm": float(native.norm()),
        "map_r2": layer.r2_forward,
        "swing": swing,
        "unsteered_score": float(base.mean()),
    }
    if neutral:
        with ctx.phase("side_effects"):
            nll = _neutral_nll(ctx, name, neutral, [None, mapped, native], spec.scale, positions)
        metrics["perplexity_ratio"] = float(np.exp(nll[1] - nll[0]))
        metrics["native_perplexity_ratio"] = float(np.exp(nll[2] - nll[0]))

    # replicates: resampled prompts and pairs; random direction b mod draws
    w_eval = ctx.weights(len(prompts), "evaluate")
    w_pairs = ctx.weights(len(pairs), "contrast")
    resamples = w_eval.shape[0]
    rep_denom = np.maximum(np.abs(w_pairs @ pair_diffs), SWING_FLOOR)
    rep = (w_eval @ steered.T - (w_eval @ base)[:, None]) / rep_denom[:, None]  # [B, vectors]
    random_rep = rep[np.arange(resamples), 2 + np.arange(resamples) % RANDOM_DRAWS]
    outcome = Outcome(metrics=metrics)
    outcome.bootstrap = make_replicates(
        resamples=resamples,
        seed=ctx.bootstrap_seed,
        items={"evaluate": len(prompts), "contrast": len(pairs)},
        metrics={
            "effect": rep[:, 0],
            "native_effect": rep[:, 1],
            "random_effect": random_rep,
            "ratio_to_native": _ratio(rep[:, 0], rep[:, 1]),
            "random_ratio": _ratio(random_rep, rep[:, 1]),
        },
    )
    return outcome


#: The most values one logits tensor of the side-effect phase may hold (64 MiB in float32):
#: every-position NLL runs on as many rows of a chunk at a time as fit.
LOGIT_BUDGET = 1 << 24


def _neutral_nll(
    ctx: Context,
    name: str,
    texts: list[str],
    vectors: list[Tensor | None],
    scale: float,
    positions: list[int] | None,
) -> list[float]:
    """Mean next-token NLL on ``texts``, unsteered (None) or steered, where the steering acts.

    Every position (``positions`` None): over every real next token of each text. The last
    position only: the vector changes what is read at a prompt's last token, so the NLL is
    that of each text's last token given the text before it, the vector added at the
    prefix's last position (texts of one token are skipped). Logits never exceed
    :data:`LOGIT_BUDGET` values at a time."""
    totals = [0.0] * len(vectors)
    count = 0
    vocab = int(getattr(ctx.model.config, "vocab_size", 0) or len(ctx.tokenizer))
    last_only = positions is not None
    rows = [row[-(ctx.max_tokens + 1) :] for row in token_ids(ctx.tokenizer, texts)]
    if last_only:
        rows = [row for row in rows if len(row) >= 2]
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    for chunk in ctx.chunks(rows):
        if last_only:
            enc = encode_rows([row[:-1] for row in chunk], pad, ctx.device)
            answers = torch.tensor([row[-1] for row in chunk], device=ctx.device)
            count += len(chunk)
        else:
            enc = encode_rows([row[-ctx.max_tokens :] for row in chunk], pad, ctx.device)
            real = (enc.real[:, 1:] & enc.real[:, :-1]).float()
            count += int(real.sum())
        for k, vector in enumerate(vectors):
            with contextlib.ExitStack() as stack:
                if vector is not None:
                    stack.enter_context(
                        add_vector(ctx.model, name, vector, scale=scale, positions=positions)
                    )
                if last_only:
                    logits = forward(ctx.model, enc)
                    totals[k] += float(F.cross_entropy(logits, answers, reduction="sum"))
                else:
                    totals[k] += _every_token_nll(ctx, enc, real, vocab)
            ctx.progress.step()
    return [t / max(count, 1) for t in totals]


def _every_token_nll(ctx: Context, enc: Encoded, real: Tensor, vocab: int) -> float:
    """Summed next-token NLL over the real tokens of a batch, a few rows at a time so that no
    logits tensor holds more than :data:`LOGIT_BUDGET` values."""
    seq = enc.input_ids.shape[1]
    step = max(1, LOGIT_BUDGET // max(seq * vocab, 1))
    total = 0.0
    for i in range(0, enc.input_ids.shape[0], step):
        part = Encoded(
            enc.input_ids[i : i + step], enc.attention_mask[i : i + step], enc.lengths[i : i + step]
        )
        logits = forward(ctx.model, part, last_only=False)
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), part.input_ids[:, 1:], reduction="none"
        )
        total += float((nll * real[i : i + step]).sum())
        del logits, nll
    return total


# -- mapped probe -----------------------------------------------------------------------------


def run_probe(spec: MappedProbeSpec, ctx: Context) -> Outcome:
    layer = layer_map(ctx, spec.artifact, "mapped_probe")
    texts, classes, class_names = examples_of(spec.data)
    if len(class_names) != 2:
        raise ExperimentError(
            f"mapped_probe reads one direction, so it needs 2 classes; the data has "
            f"{len(class_names)}"
        )
    labels = np.asarray(classes)
    if np.bincount(labels, minlength=2).min() < 2:
        raise ExperimentError("mapped_probe needs at least 2 examples of each class")
    train_idx, test_idx = stratified_split(labels, spec.test_fraction, spec.seed)
    name = ctx.layout.hook_name("hook_resid_post", block=layer.block)
    chunks = ctx.chunks(texts)
    ctx.progress.plan(len(chunks) + 1)
    positions = [-1] if spec.position == "last" else None
    feats: list[Tensor] = []
    with ctx.phase("features"):
        for chunk in chunks:
            enc = ctx.encode(chunk)
            with capture(ctx.model, [name], positions=positions) as cache:
                forward(ctx.model, enc)
            x = cache[name]
            feats.append(
                (x[:, 0] if spec.position == "last" else masked_mean(x, enc.real)).double()
            )
            ctx.progress.step()
    x = torch.cat(feats).cpu()
    y = torch.as_tensor(labels)
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)

    mapped = torch.as_tensor(layer.probe_direction(spec.artifact.values), dtype=torch.float64)
    directions = [mapped] + [
        v.double()
        for v in random_directions(float(mapped.norm()), x.shape[1], spec.seed, RANDOM_DRAWS)
    ]
    correct = np.zeros((1 + len(directions), len(test_idx)))
    with ctx.phase("fit"):
        for k, w in enumerate(directions):
            s = x @ w
            m0, m1 = float(s[tr][y[tr] == 0].mean()), float(s[tr][y[tr] == 1].mean())
            sign = 1.0 if m1 >= m0 else -1.0
            pred = (sign * (s - (m0 + m1) / 2) > 0).long()
            correct[1 + k if k else 0] = (pred[te] == y[te]).double().numpy()
        mu, sd = x[tr].mean(0), x[tr].std(0, unbiased=False)
        sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
        z = ((x - mu) / sd).float()
        w_n, b_n = fit_logistic_many(z[tr][None], y[tr][None], 2, spec.l2)
        correct[1] = ((z @ w_n[0] + b_n[0]).argmax(-1)[te] == y[te]).double().numpy()
        ctx.progress.step()
    # rows: 0 mapped, 1 native, 2.. random draws
    test_counts = np.bincount(labels[test_idx], minlength=2)
    chance = float(test_counts.max() / test_counts.sum())
    accuracy = correct.mean(axis=1)

    def effect(acc: np.ndarray, ch: np.ndarray | float) -> np.ndarray:
        head = 1.0 - np.asarray(ch)
        out: np.ndarray = np.where(head > 1e-12, (acc - ch) / np.where(head > 1e-12, head, 1.0), 0)
        return out

    eff = effect(accuracy, chance)
    metrics = {
        "accuracy": float(accuracy[0]),
        "native_accuracy": float(accuracy[1]),
        "random_accuracy": float(accuracy[2]),
        "chance": chance,
        "effect": float(eff[0]),
        "native_effect": float(eff[1]),
        "random_effect": float(eff[2]),
        "ratio_to_native": float(_ratio(eff[:1], eff[1:2])[0]),
        "random_ratio": float(_ratio(eff[2:3], eff[1:2])[0]),
        "map_r2": layer.r2_backward,
        "test_examples": float(len(test_idx)),
    }
    weights = ctx.weights(len(test_idx), "test")
    resamples = weights.shape[0]
    rep_acc = weights @ correct.T  # [B, rows]
    onehot = np.eye(2)[labels[test_idx]]
    rep_chance = (weights @ onehot).max(axis=1)
    rep_random = rep_acc[np.arange(resamples), 2 + np.arange(resamples) % RANDOM_DRAWS]
    rep_eff = effect(rep_acc[:, :2], rep_chance[:, None])
    rep_random_eff = effect(rep_random, rep_chance)
    return Outcome(
        metrics=metrics,
        bootstrap=make_replicates(
            resamples=resamples,
            seed=ctx.bootstrap_seed,
            items={"test": len(test_idx)},
            metrics={
                "accuracy": rep_acc[:, 0],
                "native_accuracy": rep_acc[:, 1],
                "random_accuracy": rep_random,
                "effect": rep_eff[:, 0],
                "native_effect": rep_eff[:, 1],
                "random_effect": rep_random_eff,
                "ratio_to_native": _ratio(rep_eff[:, 0], rep_eff[:, 1]),
                "random_ratio": _ratio(rep_random_eff, rep_eff[:, 1]),
            },
        ),
    )
