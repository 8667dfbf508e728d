"""The transfer benchmark: does the transfer check tell apart, on demo builds with known ground
truth, a behaviour the analogs share, one they lack, one they learned partly, and real methods
from their controls? And does a finding carried through the lab's residual map work?

    python benchmarks/transfer.py --home /tmp/demo1="1 thread" --home /tmp/demo2="2 threads" \\
        --markdown docs/transfer-benchmark.md

For each build (``--home PATH[=LABEL]``, repeatable; default: this machine's settings):

1. **Ground truth.** Each behaviour of the toy world (docs/foundry.md) is measured on every
   model with the foundry's own accuracy measure (``foundry.fidelity.choice_accuracy``) on a
   draw of items apart from the specs' (seed ``ABILITY_SEED``). A case's expected verdict
   follows from it, never from a verdict: both models have the behaviour → ``transfers``;
   the analog has it partly → ``partial``; the analog (or the frontier) lacks it →
   ``does not``; a control → ``does not`` (never above ``partial``).
2. **Cases.** Every spec in docs/specs/ on each small model and on the frontier (from the
   build's demo lab site), compared with ``experiments.transfer.compare``: score, 95%
   interval, verdict. The small models are the build's analogs and, unless
   ``--no-baselines``, their scratch twins (the analog's shape trained on the same batches
   without the frontier), which lack what only distillation carried: the cases of a
   behaviour only the frontier has.
3. **Mapped cases.** The map between each analog and the frontier is fitted in-process on the
   neutral corpus (``experiments.mapping.fit_map``); the analog's sentiment vector (and an
   IOI vector) goes to the frontier with ``mapped_steering``: its effect against the native
   frontier vector and an equal-norm random one, and the perplexity on neutral text.

Tables (per build): the cases, the confusion matrix of verdict against ground truth, the
separation between real effects and their controls, and the mapped cases; ``--markdown``
writes them to a page. ``--write-specs`` (re)writes the specs with generated inline data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from analoglab.config import get_settings
from analoglab.experiments.mapping import (
    CORPORA,
    DEFAULT_CORPUS,
    MIN_CONTEXT,
    ResidualMap,
    fit_map,
    map_corpus,
)
from analoglab.experiments.methods.common import chunked, encode, forward
from analoglab.experiments.result import ExperimentResult
from analoglab.experiments.runner import ExperimentError, run
from analoglab.experiments.spec import (
    AnySpec,
    Artifact,
    Bootstrap,
    MappedSteeringSpec,
    Pair,
    Pairs,
    Prompts,
    TaskSetRef,
    load_spec,
)
from analoglab.experiments.transfer import (
    TransferError,
    TransferReport,
    compare,
    verdict_of_effects,
)
from analoglab.experiments.uncertainty import percentile_interval
from analoglab.foundry import corpus
from analoglab.foundry import world as w
from analoglab.foundry.fidelity import choice_accuracy
from analoglab.foundry.tasks import ChoiceItem, ContrastPair, task_set
from analoglab.foundry.world import World
from analoglab.interventions import block_at_depth, capture, layout_of
from analoglab.models.loading import LoadedModel, load_any, quiet_transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import parse_home

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "docs" / "specs"

SPEC_SEED = 12345  # the generated specs' items (the task sets' default seed)
ABILITY_SEED = 777  # the ground-truth measurement's items: a draw apart from the specs'
ABILITY_ITEMS = 1000
FRONTIER_HAS_EFFECT = 0.6  # |2·acc − 1| at least: the frontier has the behaviour (acc ≥ 0.8)
FRONTIER_LACKS_EFFECT = 0.2  # |2·acc − 1| at most: the frontier lacks it (acc 0.4–0.6)
SHARE_CUTS = (0.3, 0.6)  # the analog's share of the frontier's effect: lacks / partly / has
BORDER = 0.05  # a share this close to a cut is too close to call: the case is not labelled
MAPPED_DEPTH = 0.5
MAPPED_SCALES = (1.0, 2.0)  # 2: the headline scale of steer-sentiment.yaml; 1: half of it
MAP_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAP_TEXTS = 256  # texts a map is fitted on (as `analoglab map fit` and the foundry do)
MAP_SEED = 1  # the maps' corpus draw and held-out split (apart from the specs' seed 12345)
VERDICTS = ("transfers", "partial", "inconclusive", "does_not_transfer", "no_effect")
EXPECTED_KINDS = ("transfers", "partial", "does not", "control")

# -- the toy world's behaviours ---------------------------------------------------------------


def _lives(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    """``{person} lives in`` → their city vs another city."""
    items = []
    for i in range(n):
        person = w.PEOPLE[i % len(w.PEOPLE)]
        city = world.person_city[person]
        foil = rng.choice([c for c in w.CITIES if c != city])
        items.append(ChoiceItem(f"{person} lives in", " " + city, " " + foil, "lives"))
    return items


def _jobs(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    """``{person} works as a`` → their job vs another job."""
    items = []
    for i in range(n):
        person = w.PEOPLE[i % len(w.PEOPLE)]
        job = world.person_job[person]
        foil = rng.choice([j for j in w.JOBS if j != job])
        items.append(ChoiceItem(f"{person} works as a", " " + job, " " + foil, "jobs"))
    return items


def _copying(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
    """A roll call read again, cut after ``j`` names: the next name vs another of the call
    (copying from context, the building block of IOI)."""
    items = []
    for _ in range(n):
        names = rng.sample(w.PEOPLE, rng.randint(3, 6))
        j = rng.randint(1, len(names) - 1)
        prompt = f"roll call : {' '.join(names)} . again : {' '.join(names[:j])}"
        foil = rng.choice([p for p in names if p != names[j]])
        items.append(ChoiceItem(prompt, " " + names[j], " " + foil, "copying"))
    return items


def _from_task_set(name: str) -> Callable[[World, random.Random, int], list[ChoiceItem]]:
    def draw(world: World, rng: random.Random, n: int) -> list[ChoiceItem]:
        seed = rng.randrange(2**31)
        return [i for i in task_set(name, n, seed, world).items if isinstance(i, ChoiceItem)]

    return draw


#: behaviour → (what it is, its choice items)
BEHAVIOURS: dict[str, tuple[str, Callable[[World, random.Random, int], list[ChoiceItem]]]] = {
    "sentiment": ("review → ' good' / ' bad' (task set sentiment)", _from_task_set("sentiment")),
    "facts": ("'{city} is a city in' → its country (task set facts)", _from_task_set("facts")),
    "lives": ("'{person} lives in' → their city (corpus fact documents)", _lives),
    "jobs": ("'{person} works as a' → their job (corpus fact documents)", _jobs),
    "copying": ("roll call read again → the next name (induction)", _copying),
    "ioi": ("indirect object vs subject (task set ioi)", _from_task_set("ioi")),
    "negation": ("true/false statements, 30% negated (task set truth)", _from_task_set("truth")),
}

# -- the cases and their ground truth ---------------------------------------------------------

#: spec file → (behaviour, role). ``architecture``: norm profiles over depth, shared by
#: construction (same architecture family); a control must never reach ``partial``.
CASES: dict[str, tuple[str, str]] = {
    "evaluate-sentiment.yaml": ("sentiment", "real"),
    "probe-sentiment.yaml": ("sentiment", "real"),
    "steer-sentiment.yaml": ("sentiment", "real"),
    "ablate-sentiment.yaml": ("sentiment", "real"),
    "patch-sentiment.yaml": ("sentiment", "real"),
    "evaluate-facts.yaml": ("facts", "real"),
    "probe-facts.yaml": ("facts", "real"),
    "ablate-facts.yaml": ("facts", "real"),
    "patch-facts.yaml": ("facts", "real"),
    "evaluate-lives.yaml": ("lives", "real"),
    "evaluate-jobs.yaml": ("jobs", "real"),
    "evaluate-copying.yaml": ("copying", "real"),
    "evaluate-ioi.yaml": ("ioi", "real"),
    "ablate-ioi.yaml": ("ioi", "real"),
    "patch-ioi.yaml": ("ioi", "real"),
    "evaluate-truth.yaml": ("negation", "real"),
    "stats-neutral.yaml": ("architecture", "real"),
    "probe-shuffled-control.yaml": ("sentiment", "control"),
    "probe-facts-shuffled-control.yaml": ("facts", "control"),
    "steer-random-control.yaml": ("sentiment", "control"),
    "steer-shuffled-pairs-control.yaml": ("sentiment", "control"),
    "evaluate-sentiment-scrambled-control.yaml": ("sentiment", "control"),
    "ablate-sentiment-scrambled-control.yaml": ("sentiment", "control"),
}

#: a real case and its control, for the separations
CONTROL_OF: dict[str, str] = {
    "probe-shuffled-control.yaml": "probe-sentiment.yaml",
    "probe-facts-shuffled-control.yaml": "probe-facts.yaml",
    "steer-random-control.yaml": "steer-sentiment.yaml",
    "steer-shuffled-pairs-control.yaml": "steer-sentiment.yaml",
    "evaluate-sentiment-scrambled-control.yaml": "evaluate-sentiment.yaml",
    "ablate-sentiment-scrambled-control.yaml": "ablate-sentiment.yaml",
}


def level(share: float, border: float = BORDER) -> str | None:
    """The analog's share of the frontier's effect as a ground-truth level (None: within
    ``border`` of a cut-off, too close to call)."""
    if any(abs(share - cut) < border for cut in SHARE_CUTS):
        return None
    if share >= SHARE_CUTS[1]:
        return "transfers"
    return "partial" if share >= SHARE_CUTS[0] else "does not"


def expected_of(
    spec_name: str, accuracy: dict[str, dict[str, float]], analog: str, frontier: str
) -> tuple[str | None, str]:
    """The expected verdict of a case from the models' measured abilities, and why.

    Effects over chance are signed, ``2·accuracy − 1``: a model far below chance prefers the
    foil systematically, which is a behaviour too."""
    behaviour, role = CASES.get(spec_name, ("", ""))
    if not behaviour:
        return None, "not a labelled case"
    if role == "control":
        return "control", "a control"
    if behaviour == "architecture":
        return "transfers", "norm profiles: same architecture family"
    expected, why = expected_of_behaviour(behaviour, accuracy, analog, frontier)
    if spec_name.startswith("probe-") and expected in ("partial", "does not"):
        # a probe reads whether the label is linearly decodable from the residual stream; a
        # model that does not *produce* the answer may still carry it there, so the behaviour's
        # accuracy labels a probe only where the analog has the behaviour
        return None, why + " (a probe reads decodability, not the behaviour: not labelled)"
    return expected, why


def expected_of_behaviour(
    behaviour: str, accuracy: dict[str, dict[str, float]], analog: str, frontier: str
) -> tuple[str | None, str]:
    """The expected verdict for a behaviour from the two models' measured accuracies."""
    acc_a, acc_f = accuracy[behaviour][analog], accuracy[behaviour][frontier]
    e_a, e_f = 2 * acc_a - 1, 2 * acc_f - 1
    why = f"{behaviour}: accuracy {acc_a:.2f} / {acc_f:.2f}"
    if abs(e_f) <= FRONTIER_LACKS_EFFECT:
        return "does not", why + " (the frontier lacks it)"
    if abs(e_f) < FRONTIER_HAS_EFFECT:
        return None, why + " (the frontier has it partly: not labelled)"
    share = max(0.0, e_a / e_f)
    # the share's own sampling error (delta method; each effect's variance 4·acc·(1−acc)/n):
    # a case is labelled only where its ground truth is clear of the cut by its own 95% reach
    var_a = 4 * acc_a * (1 - acc_a) / ABILITY_ITEMS
    var_f = 4 * acc_f * (1 - acc_f) / ABILITY_ITEMS
    reach = 1.96 * (var_a + share**2 * var_f) ** 0.5 / abs(e_f)
    lab = level(share, max(BORDER, reach))
    return lab, why + f", share {share:.2f} ± {reach:.2f}" + (
        "" if lab else " (within its own 95% reach of a cut: not labelled)"
    )


def correct(expected: str, verdict: str) -> bool:
    """Right when a shared behaviour transfers, a partly learned one is partial, a frontier-only
    one does not transfer, and a control does not transfer."""
    if expected in ("transfers", "partial"):
        return verdict == expected
    return verdict in ("does_not_transfer", "no_effect")


# -- generated specs (inline data) ------------------------------------------------------------


def _choices(items: Sequence[ChoiceItem]) -> dict[str, Any]:
    return {
        "kind": "choices",
        "items": [{"prompt": i.prompt, "target": i.target, "foil": i.foil} for i in items],
    }


def _review(thing: str, adj: Sequence[str], verb: str) -> str:
    return f"the {thing} was {adj[0]} and {adj[1]} . i {verb} it . overall it was"


def generated_specs(world: World | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Specs whose data is generated from the toy world (file name → (comment, spec))."""
    world = world or World.create(0)
    specs: dict[str, tuple[str, dict[str, Any]]] = {}

    def rng(name: str) -> random.Random:
        return random.Random(f"bench-{name}-{SPEC_SEED}")

    for name, n in (("lives", 100), ("jobs", 100), ("copying", 200)):
        items = BEHAVIOURS[name][1](world, rng(name), n)
        specs[f"evaluate-{name}.yaml"] = (
            f"Evaluation: {BEHAVIOURS[name][0]}.",
            {"method": "evaluation", "data": _choices(items)},
        )

    r = rng("patch-facts")
    patch = []
    for i in range(64):
        city = w.CITIES[i % len(w.CITIES)]
        other = r.choice([c for c in w.CITIES if world.city_country[c] != world.city_country[city]])
        patch.append(
            {
                "clean": f"{city} is a city in",
                "corrupt": f"{other} is a city in",
                "target": " " + world.city_country[city],
                "foil": " " + world.city_country[other],
            }
        )
    specs["patch-facts.yaml"] = (
        "Residual-stream patching clean → corrupt on '{city} is a city in' with a city of "
        "another country.",
        {"method": "patching", "data": {"kind": "patch_pairs", "items": patch}},
    )

    r = rng("patch-sentiment")
    patch = []
    for _ in range(64):
        thing = r.choice(w.THINGS)
        pos = _review(thing, r.sample(w.POSITIVE, 2), r.choice(w.POSITIVE_VERBS))
        neg = _review(thing, r.sample(w.NEGATIVE, 2), r.choice(w.NEGATIVE_VERBS))
        patch.append({"clean": pos, "corrupt": neg, "target": " good", "foil": " bad"})
    specs["patch-sentiment.yaml"] = (
        "Residual-stream patching clean → corrupt: a positive review and the same review "
        "written negative.",
        {"method": "patching", "data": {"kind": "patch_pairs", "items": patch}},
    )

    def scrambled(r: random.Random, contents: int) -> list[ChoiceItem]:
        # each review's words drawn from both sentiments at random, and every prompt used
        # twice, once per label: the prompt carries nothing of its label
        items = []
        for _ in range(contents):
            adj = r.sample([*w.POSITIVE, *w.NEGATIVE], 2)
            verb = r.choice([*w.POSITIVE_VERBS, *w.NEGATIVE_VERBS])
            prompt = _review(r.choice(w.THINGS), adj, verb)
            items.append(ChoiceItem(prompt, " good", " bad", "positive"))
            items.append(ChoiceItem(prompt, " bad", " good", "negative"))
        return items

    specs["evaluate-sentiment-scrambled-control.yaml"] = (
        "The control of evaluate-sentiment.yaml: scrambled prompts (each review's words drawn "
        "from both sentiments at random; every prompt once with each label).",
        {"method": "evaluation", "data": _choices(scrambled(rng("scrambled-eval"), 200))},
    )
    specs["ablate-sentiment-scrambled-control.yaml"] = (
        "The control of ablate-sentiment.yaml: mean-ablation on scrambled prompts (each "
        "review's words drawn from both sentiments at random; every prompt with each label).",
        {"method": "ablation", "data": _choices(scrambled(rng("scrambled-ablate"), 32))},
    )

    r = rng("shuffled-pairs")
    pairs = [p for p in task_set("sentiment_pairs", 64).items if isinstance(p, ContrastPair)]
    swapped = set(r.sample(range(len(pairs)), len(pairs) // 2))
    shuffled = [
        {"positive": p.negative, "negative": p.positive}
        if k in swapped
        else {"positive": p.positive, "negative": p.negative}
        for k, p in enumerate(pairs)
    ]
    specs["steer-shuffled-pairs-control.yaml"] = (
        "The control of steer-sentiment.yaml: the same contrast pairs, half of them (seeded) "
        "with positive and negative swapped.",
        {
            "method": "steering",
            "description": "Control for steer-sentiment.yaml: contrast pairs with shuffled "
            "labels (half swapped).",
            "contrast": {"kind": "pairs", "pairs": shuffled},
            "evaluate": {"kind": "task_set", "name": "neutral", "n": 64},
            "target": " good",
            "foil": " bad",
            "neutral": {"kind": "task_set", "name": "neutral", "n": 32},
            "layers": {"depths": [0.0, 0.25, 0.5, 0.75, 1.0]},
            "scales": [-2, -1, 0, 1, 2],
        },
    )
    return specs


def write_specs() -> list[Path]:
    import yaml

    written = []
    for name, (comment, spec) in generated_specs().items():
        path = SPECS / name
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=200)
        path.write_text(
            f"# {comment}\n# Generated by benchmarks/transfer.py --write-specs (the toy world's "
            "ground truth); do not edit by hand.\n" + text
        )
        written.append(path)
    return written


# -- running a build --------------------------------------------------------------------------


@dataclass
class Row:
    spec: str
    analog: str
    effect: str
    score: float
    low: float | None
    high: float | None
    verdict: str
    expected: str | None
    why: str
    notes: list[str] = field(default_factory=list)
    # a control decided on its draw-averaged score: the interval its verdict reads
    draw_low: float | None = None
    draw_high: float | None = None
    # a verdict the two effects' own intervals settled (no effect / only one model shows
    # it): those intervals, as text; the score's interval is then shown but not read
    effects: str | None = None

    @property
    def right(self) -> bool | None:
        return None if self.expected is None else correct(self.expected, self.verdict)

    @property
    def decided_high(self) -> float | None:
        """The upper bound of the score interval the verdict reads (None where the effects'
        own intervals settled the verdict: no score interval was read)."""
        if self.effects is not None:
            return None
        return self.draw_high if self.draw_high is not None else self.high

    def interval_text(self) -> str:
        text = f"{_f(self.low)}–{_f(self.high)}"
        if self.draw_low is not None:
            text += f" (draws averaged: {_f(self.draw_low)}–{_f(self.draw_high)})"
        if self.effects is not None:
            text += f" (not read: {self.effects})"
        return text


@dataclass
class Mapped:
    case: str
    analog: str
    map_data: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    seconds: float
    check: Row | None = None
    scale: float = 2.0  # the mapped transfer check (artifact on its analog vs frontier)


@dataclass
class BuildReport:
    label: str
    home: Path
    frontier: str
    models: dict[str, str]  # name → weights sha256
    accuracy: dict[str, dict[str, float]]  # behaviour → model → accuracy
    cards: dict[str, dict[str, float]]  # model → the build's own fidelity task accuracies
    rows: list[Row] = field(default_factory=list)
    mapped: list[Mapped] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["home"] = str(self.home)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildReport:
        data = dict(data)
        data["home"] = Path(data["home"])
        data["rows"] = [Row(**r) for r in data["rows"]]
        data["mapped"] = [
            Mapped(
                **{
                    **m,
                    "intervals": {k: tuple(v) for k, v in m["intervals"].items()},
                    "check": Row(**m["check"]) if m.get("check") else None,
                }
            )
            for m in data["mapped"]
        ]
        return cls(**data)


def with_resamples(spec: AnySpec, resamples: int) -> AnySpec:
    if spec.bootstrap.resamples == resamples:
        return spec
    return spec.model_copy(update={"bootstrap": Bootstrap(resamples=resamples)})


def measure_abilities(models: dict[str, LoadedModel]) -> dict[str, dict[str, float]]:
    world = World.create(0)
    out: dict[str, dict[str, float]] = {}
    for name, (_, draw) in BEHAVIOURS.items():
        items = draw(world, random.Random(f"ability-{name}-{ABILITY_SEED}"), ABILITY_ITEMS)
        out[name] = {
            m: choice_accuracy(loaded.model, loaded.tokenizer, items)
            for m, loaded in models.items()
        }
    return out


def build_cards(home: Path, frontier: str) -> dict[str, dict[str, float]]:
    """The task accuracies the build measured itself (its fidelity stage; the cards')."""
    paths = sorted((home / "foundry").glob("*/fidelity.json"))
    if not paths:
        return {}
    data = json.loads(paths[0].read_text())
    cards = {frontier: data["frontier"]["tasks"]}
    for name, student in data.get("students", {}).items():
        cards[name] = student["tasks"]
    return cards


def run_cases(
    report: BuildReport,
    models: dict[str, LoadedModel],
    analogs: list[str],
    frontier: str,
    resamples: int,
    only: set[str] | None,
) -> None:
    for path in sorted(SPECS.glob("*.yaml")):
        if only and path.name not in only:
            continue
        spec = with_resamples(load_spec(path), resamples)
        if spec.method in ("mapped_steering", "mapped_probe", "fidelity"):
            continue
        t0 = time.perf_counter()
        try:
            results = {name: run(spec, m) for name, m in models.items()}
        except ExperimentError as exc:
            report.skipped.append(f"{path.name}: {exc}")
            print(f"{path.name}: cannot run on these models: {exc}", flush=True)
            continue
        for analog in analogs:
            rep = compare(results[analog], results[frontier])
            expected, why = expected_of(path.name, report.accuracy, analog, frontier)
            report.rows.append(row_of(path.name, analog, rep, expected, why))
        report.seconds[path.name] = time.perf_counter() - t0
        print(f"  {path.name}: {report.seconds[path.name]:.1f}s", flush=True)


def row_of(spec: str, analog: str, rep: TransferReport, expected: str | None, why: str) -> Row:
    parts = {p.name: p for p in rep.parts}
    eff = parts.get("effect_agreement")
    effect = ""
    if eff is not None and eff.analog is not None and eff.frontier is not None:
        effect = f"{eff.analog:+.2f} / {eff.frontier:+.2f}"
    ci = rep.score_interval
    drawn = getattr(rep, "draw_mean_interval", None)  # code before draw-averaged controls: None
    states = getattr(rep, "effect_states", None)  # code before effect states: None
    ivs = getattr(rep, "effect_intervals", None)
    effects = None
    if states and ivs and verdict_of_effects(states["analog"], states["frontier"]) is not None:
        effects = (
            f"effects {states['analog']} {ivs['analog']} / {states['frontier']} {ivs['frontier']}"
        )
    return Row(
        spec,
        analog,
        effect,
        rep.score,
        None if ci is None else ci.low,
        None if ci is None else ci.high,
        rep.verdict,
        expected,
        why,
        list(rep.notes),
        None if drawn is None else drawn.low,
        None if drawn is None else drawn.high,
        effects,
    )


# -- mapped cases -----------------------------------------------------------------------------


@torch.no_grad()
def analog_vector(loaded: LoadedModel, pairs: Sequence[Pair], depth: float) -> list[float]:
    """What a researcher finds on the analog: the mean ``hook_resid_post`` at the last token
    of the positive texts minus the negative ones, at relative ``depth`` (as steering does)."""
    layout = layout_of(loaded.model)
    name = layout.hook_name("hook_resid_post", block=block_at_depth(depth, layout.n_layers))
    means = []
    for texts in ([p.positive for p in pairs], [p.negative for p in pairs]):
        total = torch.zeros(layout.d_model, dtype=torch.float64)
        for chunk in chunked(texts, 32):
            enc = encode(loaded.tokenizer, chunk, 128, loaded.device)
            with capture(loaded.model, [name], positions=[-1]) as cache:
                forward(loaded.model, enc)
            total += cache[name][:, 0].double().sum(0).cpu()
        means.append(total / len(texts))
    return [float(v) for v in (means[0] - means[1])]


def ioi_pairs(n: int) -> tuple[str, str, list[Pair], list[str]]:
    """IOI contrast pairs between two fixed people P and Q (positive: P is the indirect
    object, Q the subject; negative: the roles swapped, all else equal), and evaluate prompts
    naming both with a third person as the giver (no answer between them)."""
    p, q = w.PEOPLE[0], w.PEOPLE[1]
    r = random.Random(f"bench-mapped-ioi-{SPEC_SEED}")
    pairs, prompts = [], []
    for _ in range(n):
        template = r.choice(corpus.IOI_TEMPLATES)
        first, second = (p, q) if r.random() < 0.5 else (q, p)
        place, obj = r.choice(w.PLACES), r.choice(w.OBJECTS)
        fill = {"A": first, "B": second, "place": place, "obj": obj}
        pairs.append(
            Pair(positive=template.format(S=q, **fill), negative=template.format(S=p, **fill))
        )
        giver = r.choice([x for x in w.PEOPLE if x not in (p, q)])
        prompts.append(template.format(S=giver, **fill))
    return " " + p, " " + q, pairs, prompts


def run_mapped(
    report: BuildReport,
    models: dict[str, LoadedModel],
    analogs: list[str],
    frontier: str,
    resamples: int,
) -> None:
    sentiment_pairs = [
        Pair(positive=p.positive, negative=p.negative)
        for p in task_set("sentiment_pairs", 64, SPEC_SEED).items
        if isinstance(p, ContrastPair)
    ]
    target_ioi, foil_ioi, pairs_ioi, prompts_ioi = ioi_pairs(64)
    # the maps: on the corpora `analoglab map fit --corpus` offers, drawn as it draws them
    # (mapping.map_corpus; seed MAP_SEED keeps them apart from the specs' neutral prompts),
    # the default first; and, as a diagnostic only, on review texts (the very task text a
    # lab would not fit on: a draw of sentiment_pairs apart from the contrast pairs, seed 999)
    reviews = [p for p in task_set("sentiment_pairs", MAP_TEXTS // 2, 999).items]
    map_texts = {
        name: map_corpus(name, MAP_TEXTS, MAP_SEED)
        for name in [DEFAULT_CORPUS, *(c for c in CORPORA if c != DEFAULT_CORPUS)]
    }
    map_texts["reviews"] = [
        text for p in reviews if isinstance(p, ContrastPair) for text in (p.positive, p.negative)
    ]
    cases = {
        "sentiment": (sentiment_pairs, TaskSetRef(name="neutral", n=64), " good", " bad"),
        "ioi": (pairs_ioi, Prompts(prompts=prompts_ioi), target_ioi, foil_ioi),
    }
    for analog in analogs:
        vectors = {
            case: analog_vector(models[analog], pairs, MAPPED_DEPTH)
            for case, (pairs, *_) in cases.items()
        }
        for map_data, texts in map_texts.items():
            t0 = time.perf_counter()
            rmap: ResidualMap = fit_map(
                models[analog], models[frontier], texts, MAP_DEPTHS, seed=MAP_SEED, corpus=map_data
            )
            print(
                f"  map {analog} → {frontier} on {map_data}: {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            for (case, (pairs, evaluate, target, foil)), scale in itertools.product(
                cases.items(), MAPPED_SCALES
            ):
                t1 = time.perf_counter()
                spec = MappedSteeringSpec(
                    description=f"The {case} vector found on {analog}, carried to the frontier.",
                    artifact=Artifact(
                        kind="steering_vector",
                        analog=models[analog].name,
                        depth=MAPPED_DEPTH,
                        width=len(vectors[case]),
                        values=vectors[case],
                        analog_sha256=models[analog].weights_sha256,
                    ),
                    contrast=Pairs(pairs=pairs),
                    evaluate=evaluate,
                    target=target,
                    foil=foil,
                    neutral=TaskSetRef(name="neutral", n=32),
                    scale=scale,
                    bootstrap=Bootstrap(resamples=resamples),
                )
                result = run(spec, models[frontier], residual_map=rmap)
                mapped = mapped_of(case, analog, map_data, result, 0.0)
                mapped.scale = scale
                try:  # the mapped transfer check: the artifact as it is on its own analog
                    on_analog = run(spec, models[analog])
                    rep = compare(on_analog, result)
                    behaviour = "sentiment" if case == "sentiment" else "ioi"
                    expected, why = expected_of_behaviour(
                        behaviour, report.accuracy, analog, frontier
                    )
                    mapped.check = row_of(f"mapped {case}", analog, rep, expected, why)
                except (ExperimentError, TransferError) as exc:
                    report.skipped.append(f"mapped {case} check from {analog}: {exc}")
                mapped.seconds = time.perf_counter() - t1
                report.mapped.append(mapped)
                print(
                    f"  mapped {case} from {analog} ({map_data}, scale {scale:g}): "
                    f"{mapped.seconds:.1f}s",
                    flush=True,
                )


def mapped_of(
    case: str, analog: str, map_data: str, result: ExperimentResult, seconds: float
) -> Mapped:
    intervals: dict[str, tuple[float, float]] = {}
    if result.bootstrap is not None:
        for key, values in result.bootstrap.metrics.items():
            intervals[key] = percentile_interval(values)
    return Mapped(case, analog, map_data, dict(result.metrics), intervals, seconds)


def scratch_twins(home: Path, analogs: Sequence[str]) -> dict[str, Path]:
    """Each analog's scratch baseline that the build kept (``<foundry>/<preset>/students/
    <analog>-scratch``: the analog's shape trained on the same corpus and batches without the
    frontier; its card's baseline), by name."""
    out: dict[str, Path] = {}
    for analog in analogs:
        for path in sorted((home / "foundry").glob(f"*/students/{analog}-scratch")):
            if (path / "config.json").is_file():
                out[path.name] = path
    return out


def run_build(
    home: Path,
    label: str,
    analogs: list[str],
    frontier: str,
    device: str | None,
    resamples: int,
    only: set[str] | None,
    mapped: bool,
    baselines: bool = True,
) -> BuildReport:
    start = time.perf_counter()
    settings = get_settings(home=home)
    models = {n: load_any(n, device=device, settings=settings) for n in [*analogs, frontier]}
    if baselines:
        for name, path in scratch_twins(home, analogs).items():
            models[name] = load_any(str(path), device=device, settings=settings)
            analogs = [*analogs, name]
    report = BuildReport(
        label=label,
        home=home,
        frontier=frontier,
        models={n: m.weights_sha256 for n, m in models.items()},
        accuracy={},
        cards=build_cards(home, frontier),
    )
    report.run_info = run_info(resamples)
    t0 = time.perf_counter()
    report.accuracy = measure_abilities(models)
    report.seconds["ground truth"] = time.perf_counter() - t0
    print(f"[{label}] ground truth: {report.seconds['ground truth']:.1f}s", flush=True)
    run_cases(report, models, analogs, frontier, resamples, only)
    if mapped:
        t0 = time.perf_counter()
        run_mapped(report, models, analogs, frontier, resamples)
        report.seconds["mapped"] = time.perf_counter() - t0
    report.seconds["total"] = time.perf_counter() - start
    print(f"[{label}] total: {report.seconds['total']:.1f}s", flush=True)
    return report


# -- tables -----------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "" if x is None else format(x, fmt)


def _ci(iv: tuple[float, float] | None, fmt: str = ".2f") -> str:
    return "" if iv is None else f"[{iv[0]:{fmt}}, {iv[1]:{fmt}}]"


def ground_truth_table(rep: BuildReport) -> list[str]:
    names = list(rep.models)
    lines = [
        "| behaviour | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for behaviour, (what, _) in BEHAVIOURS.items():
        accs = " | ".join(f"{rep.accuracy[behaviour][n]:.2f}" for n in names)
        lines.append(f"| {behaviour}: {what} | {accs} |")
    if rep.cards:
        lines.append("")
        lines.append("The build's own fidelity stage (its cards; 200 items, seed 12345):")
        lines.append("")
        tasks = sorted({t for c in rep.cards.values() for t in c})
        lines.append("| model | " + " | ".join(tasks) + " |")
        lines.append("|---|" + "---:|" * len(tasks))
        for model, card in rep.cards.items():
            values = " | ".join(f"{card.get(t, 0):.2f}" for t in tasks)
            lines.append(f"| {model} | {values} |")
    return lines


def case_table(rep: BuildReport) -> list[str]:
    lines = [
        "| spec | analog | effect (analog / frontier) | score | 95% interval | verdict "
        "| expected | right | ground truth |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rep.rows:
        mark = {True: "yes", False: "**WRONG**", None: "—"}[r.right]
        lines.append(
            f"| {r.spec} | {r.analog} | {r.effect} | {r.score:.3f} "
            f"| {r.interval_text()} | {r.verdict.replace('_', ' ')} "
            f"| {r.expected or 'not labelled'} | {mark} | {r.why} |"
        )
    return lines


def control_above_partial(r: Row) -> bool:
    """A control whose verdict is ``transfers`` or whose interval reaches the cut-off 0.6."""
    high = r.decided_high
    return r.expected == "control" and (
        r.verdict == "transfers" or (high is not None and high >= 0.6)
    )


def confusion(rows: list[Row]) -> list[str]:
    lines = ["| expected \\ verdict | " + " | ".join(v.replace("_", " ") for v in VERDICTS) + " |"]
    lines.append("|---|" + "---:|" * len(VERDICTS))
    for expected in EXPECTED_KINDS:
        counts = [
            sum(1 for r in rows if r.expected == expected and r.verdict == v) for v in VERDICTS
        ]
        lines.append(f"| {expected} | " + " | ".join(str(c) for c in counts) + " |")
    labelled = [r for r in rows if r.expected is not None]
    right = sum(1 for r in labelled if r.right)
    above = [r for r in rows if control_above_partial(r)]
    unlabelled = len(rows) - len(labelled)
    lines.append("")
    lines.append(
        f"**{right} of {len(labelled)} labelled cases right**; controls above partial: "
        f"{len(above)}" + (f"; {unlabelled} not labelled" if unlabelled else "") + "."
    )
    return lines


def separations(rows: list[Row]) -> list[str]:
    lines = []
    real = [r for r in rows if r.expected == "transfers" and r.low is not None]
    controls = [r for r in rows if r.expected == "control" and r.decided_high is not None]
    if real and controls:
        weakest = min(real, key=lambda r: r.low or 0.0)
        strongest = max(controls, key=lambda r: r.decided_high or 0.0)
        gap = (weakest.low or 0.0) - (strongest.decided_high or 0.0)
        lines.append(
            f"Overall: the smallest interval low of a case that should transfer, "
            f"{weakest.low:.3f} ({weakest.spec}, {weakest.analog}), minus the largest "
            f"interval high of a control (the interval its verdict reads), "
            f"{strongest.decided_high:.3f} ({strongest.spec}, "
            f"{strongest.analog}): **{gap:+.3f}**."
        )
        lines.append("")
    settled = [r for r in rows if r.expected == "control" and r.effects is not None]
    if settled:
        lines.append(
            f"{len(settled)} of the controls' verdicts were settled by the two effects' own "
            "intervals (no score interval read); the separation is over the others."
        )
        lines.append("")
    lines.append(
        "| control | its real case | analog | real score [95%] | control score [95%] "
        "| separation (real low − control high) |"
    )
    lines.append("|---|---|---|---:|---:|---:|")
    by_key = {(r.spec, r.analog): r for r in rows}
    for ctrl_name, real_name in CONTROL_OF.items():
        for r in rows:
            if r.spec != ctrl_name:
                continue
            q = by_key.get((real_name, r.analog))
            high = r.decided_high
            if q is None or q.low is None:
                continue
            if high is None:
                lines.append(
                    f"| {ctrl_name} | {real_name} | {r.analog} | {q.score:.3f} "
                    f"[{_f(q.low)}, {_f(q.high)}] | {r.verdict.replace('_', ' ')}, from the "
                    f"effects' intervals ({r.effects}) | — |"
                )
                continue
            lines.append(
                f"| {ctrl_name} | {real_name} | {r.analog} | {q.score:.3f} "
                f"[{_f(q.low)}, {_f(q.high)}] | {r.score:.3f} {r.interval_text()} "
                f"| {q.low - high:+.3f} |"
            )
    return lines


def mapped_table(rep: BuildReport) -> list[str]:
    lines = [
        "| case | analog | map fitted on | scale | map R² | cosine to native "
        "| norm (mapped / native) "
        "| mapped effect [95%] "
        "| native effect [95%] "
        "| mapped / native [95%] | random / native [95%] | perplexity ratio (mapped; native) "
        "| goal |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in rep.mapped:
        x, iv = m.metrics, m.intervals
        lines.append(
            f"| {m.case} | {m.analog} | {m.map_data} | {m.scale:g} | {x.get('map_r2', 0):.3f} "
            f"| {x.get('cosine_to_native', 0):+.2f} "
            f"| {x.get('mapped_norm', 0):.1f} / {x.get('native_norm', 0):.1f} "
            f"| {x['effect']:+.2f} {_ci(iv.get('effect'))} "
            f"| {x['native_effect']:+.2f} {_ci(iv.get('native_effect'))} "
            f"| {x['ratio_to_native']:.2f} {_ci(iv.get('ratio_to_native'))} "
            f"| {x['random_ratio']:+.2f} {_ci(iv.get('random_ratio'))} "
            f"| {x.get('perplexity_ratio', float('nan')):.3f}; "
            f"{x.get('native_perplexity_ratio', float('nan')):.3f} | {mapped_goal(m)} |"
        )
    return lines


def mapped_check_table(rep: BuildReport) -> list[str]:
    """The mapped transfer checks (``compare`` of the artifact on its analog, as it is, and on
    the frontier through the map): score = the carried artifact's ratio to native."""
    lines = [
        "| case | analog | map fitted on | scale | effect (analog / frontier) | score "
        "| 95% interval | verdict | expected | right | ground truth |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    checks = [(m, m.check) for m in rep.mapped if m.check is not None]
    for m, r in checks:
        mark = {True: "yes", False: "**WRONG**", None: "—"}[r.right]
        lines.append(
            f"| {m.case} | {m.analog} | {m.map_data} | {m.scale:g} | {r.effect} "
            f"| {r.score:.3f} | {r.interval_text()} | {r.verdict.replace('_', ' ')} "
            f"| {r.expected or 'not labelled'} | {mark} | {r.why} |"
        )
    right = sum(1 for _, r in checks if r.right)
    lines += ["", f"{right} of {len(checks)} mapped checks right."]
    return lines


def mapped_goal(m: Mapped) -> str:
    """The issue's goals: sentiment mapped ≥ 0.7× native, perplexity ≤ +15%, random ≤ 0.1×;
    IOI: the mapped artifact does nothing (|mapped / native| ≤ 0.1×). "met" on the interval
    (the bound on the goal's side), "point only" when only the point estimate meets it."""
    x, iv = m.metrics, m.intervals

    def check(name: str, ok_point: bool, ok_interval: bool) -> str:
        return f"{name} {'met' if ok_interval else 'point only' if ok_point else 'MISSED'}"

    ratio, rnd = x["ratio_to_native"], x["random_ratio"]
    r_iv = iv.get("ratio_to_native", (ratio, ratio))
    q_iv = iv.get("random_ratio", (rnd, rnd))
    if m.case == "sentiment":
        ppl = x.get("perplexity_ratio", float("inf"))
        return "; ".join(
            [
                check("≥0.7×", ratio >= 0.7, r_iv[0] >= 0.7),
                check("ppl ≤1.15", ppl <= 1.15, ppl <= 1.15),
                check("random ≤0.1×", abs(rnd) <= 0.1, max(abs(q_iv[0]), abs(q_iv[1])) <= 0.1),
            ]
        )
    if m.check is None or m.check.expected != "does not":
        # the goal is for a behaviour the small model lacks; where it has IOI (or its ground
        # truth is not clear), a carried IOI vector may well work
        return "— (no goal: the model has IOI, or its ground truth is unclear)"
    return check("mapped ≤0.1×", abs(ratio) <= 0.1, max(abs(r_iv[0]), abs(r_iv[1])) <= 0.1)


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def run_info(resamples: int) -> dict[str, Any]:
    """What code, where and when: the commit of this checkout, its uncommitted files under
    platform/ and this benchmark, the date, the machine, the threads and the resamples."""
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "platform", "benchmarks")
    return {
        "commit": (git("rev-parse", "--short", "HEAD") or "?").strip(),
        "uncommitted": [line[3:] for line in (dirty or "").splitlines() if line.strip()],
        "started": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "resamples": resamples,
    }


def wrong_notes(rows: list[Row]) -> list[str]:
    """The transfer report's own notes on each case that came out wrong."""
    lines = []
    for r in rows:
        if r.right is False:
            notes = " ".join(r.notes) or "(no notes)"
            lines.append(f"- {r.spec}, {r.analog} ({r.verdict.replace('_', ' ')}): {notes}")
    return lines


def header(reports: list[BuildReport]) -> list[str]:
    lines = []
    for rep in reports:
        i = rep.run_info
        dirty = i.get("uncommitted", [])
        ours = [d for d in dirty if "experiments/" in d or d.startswith("benchmarks/")]
        others = len(dirty) - len(ours)
        lines.append(
            f"- Build **{rep.label}** (`{rep.home}`; weights sha256 "
            + ", ".join(f"{n} `{h[:12]}`" for n, h in rep.models.items())
            + f"): benchmark run {i.get('started')} "
            f"with the code at commit `{i.get('commit')}`"
            + (f" plus uncommitted changes to {', '.join(ours)}" if ours else "")
            + (f" ({others} other uncommitted files under platform/)" if others else "")
            + f"; {i.get('nproc')} CPU cores (`nproc`), Python {i.get('python')}, torch "
            f"{i.get('torch')}, {i.get('threads')} torch thread(s), {i.get('resamples')} "
            f"bootstrap resamples per result; {rep.seconds.get('total', 0) / 60:.1f} min."
        )
    if len(reports) > 1:
        names = [n for n in reports[0].models if all(n in r.models for r in reports)]
        same = [n for n in names if len({r.models[n] for r in reports}) == 1]
        differ = [n for n in names if n not in same]
        if same:
            lines.append(
                f"- The builds have the same weights for {', '.join(same)}"
                + (f" and differ in {', '.join(differ)}" if differ else "")
                + ": only what differs can make the builds' tables differ."
            )
    return lines


METHOD_TEXT = [
    "## How the cases are labelled",
    "",
    "Each spec in `docs/specs/` runs on each small model and on the frontier of a build. The "
    "small models are the build's analogs and their **scratch twins** (`<analog>-scratch`: the "
    "analog's shape, trained on the same corpus and batches for the same steps with "
    "cross-entropy only, from the distilled twin's random start; the build keeps it beside "
    "the analogs as their cards' baseline and does not publish it). Distillation carries the "
    "frontier's copying and IOI to the demo analogs (docs/foundry.md) and the scratch twins "
    "do not learn them, so a twin gives the cases of a behaviour only the frontier has "
    "(`--no-baselines` leaves them out). In the tables below, *analog* names the small model. "
    "`experiments.transfer.compare` gives the score, its 95% bootstrap interval and the verdict "
    "from it. Each case is labelled **before** any verdict, by the toy world's ground truth "
    "(docs/foundry.md): what the foundry trained, and each model's accuracy on the behaviour, "
    "measured with the foundry's own measure (`foundry.fidelity.choice_accuracy`: target's first "
    f"token above the foil's) on a draw of {ABILITY_ITEMS} items apart from the specs' "
    f"(seed {ABILITY_SEED}). With effects over chance `e = 2·accuracy − 1`:",
    "",
    f"- the frontier lacks the behaviour (|e_f| ≤ {FRONTIER_LACKS_EFFECT}) → `does not` "
    "(nothing to transfer: `does not transfer` or `no effect` are right);",
    f"- the frontier has it (|e_f| ≥ {FRONTIER_HAS_EFFECT}); the analog's share of it, "
    f"e_a / e_f, is ≥ {SHARE_CUTS[1]} → `transfers`, {SHARE_CUTS[0]}–{SHARE_CUTS[1]} → `partial` "
    f"(a behaviour the analog learned partly), < {SHARE_CUTS[0]} → `does not`; with the "
    "frontier in between, or with the share within its own 95% reach of a cut (at least "
    f"{BORDER}; the reach is 1.96 standard errors of the share, by the delta method from the "
    f"two accuracies' binomial errors on the {ABILITY_ITEMS} items), the case is not labelled. "
    "(Until this benchmark's second version the border was a fixed 0.05 on 200 items, while "
    "the share's own 95% reach there is about ±0.14 for a share of 0.25: cases were labelled "
    "whose ground truth could not tell `does not` from `partial`.)",
    "- a probe reads whether the label is linearly decodable from the residual stream, not "
    "whether the model produces the answer: where the analog lacks the behaviour (or has it "
    "partly), its probe case is not labelled (a model that answers at chance may still carry "
    "the answer in its stream; the ground truth measures the behaviour only);",
    "- norm profiles over depth (`stats-neutral.yaml`) are a property of the architecture "
    "family: `transfers`;",
    "- a control (random vector of equal norm, shuffled labels, shuffled contrast pairs, "
    "scrambled prompts) must not transfer: right when `does not transfer` or `no effect`; "
    "it counts as *above partial* when its verdict is `transfers`, or when the score interval "
    "its verdict reads reaches 0.6. Where the two effects' own intervals settle the verdict "
    "(both absent: `no effect`; one present, one absent: `does not transfer`; see "
    "docs/transfer.md), no score interval is read: the table still shows it, marked *not "
    "read*, with the effects' intervals, and the separations leave it out.",
    "",
    "Behaviours of the toy world and the specs on them: sentiment (evaluation, probe, steering, "
    "ablation, patching), country facts (evaluation, probe, ablation, patching), where people "
    "live and what they work as (evaluation), copying a roll call (evaluation), IOI "
    "(evaluation, ablation, patching), negation in true/false statements (evaluation). The "
    "world has no topic task. Steering needs one fixed answer pair (only sentiment has one), "
    "and a probe needs a class label per text (sentiment, country), so those methods are not "
    "run on the other behaviours. Specs with generated data (`--write-specs`) carry a header "
    "saying so.",
]


MAPPED_TEXT = [
    "The analog's vector is what steering computes on it: the mean `hook_resid_post` at the "
    "last token of the positive contrast texts minus the negative ones, at relative depth "
    f"{MAPPED_DEPTH} (sentiment: 64 `sentiment_pairs`; IOI: 64 pairs of IOI sentences between "
    "two fixed people P and Q, P the indirect object in the positive text and Q in the "
    "negative, all else equal). It goes to the frontier with `mapped_steering` at scale "
    f"{' and '.join(f'{x:g}' for x in MAPPED_SCALES)} through a map fitted in-process as "
    "`analoglab map fit` and the foundry's maps stage fit one (`experiments.mapping.fit_map`: "
    "ridge on standardised analog activations, the ridge strength chosen per direction by "
    f"validation R², on the tokens with at least {MIN_CONTEXT} tokens of their text before "
    f"them; {MAP_TEXTS} texts drawn by `mapping.map_corpus` with seed {MAP_SEED}, "
    f"depths {', '.join(map(str, MAP_DEPTHS))}) on each corpus `--corpus` offers: "
    + ", ".join(f"`{name}` ({what})" for name, what in CORPORA.items())
    + f"; `{DEFAULT_CORPUS}` is the default. As a diagnostic only, a map fitted on review texts "
    "drawn apart from the contrast pairs (`reviews`: the very task text, which a lab would not "
    "fit a general map on) shows what the vector carries where the map is fitted on the "
    "activations it comes from. Sentiment steers neutral prompts toward ' good'; IOI steers "
    "prompts naming P and Q with a third person as the giver toward ' P'. Goals (on the "
    f"default `{DEFAULT_CORPUS}` map): sentiment mapped ≥ 0.7× native, perplexity on neutral "
    "text ≤ 1.15×, random vector of equal norm ≤ 0.1× native; IOI mapped ≤ 0.1× native where "
    "the small model lacks IOI (its IOI case is labelled `does not`; a model that has IOI has "
    "no IOI goal). *met*: the 95% interval's bound meets it; *point only*: only the point "
    "estimate does. The native vector's own perplexity ratio is shown beside the mapped one: "
    "at scale 2 steering moves neutral text more than 15% even natively.",
]


def summary(reports: list[BuildReport]) -> list[str]:
    lines = [
        "| build | labelled cases right | controls above partial | separation "
        f"| mapped checks right ({DEFAULT_CORPUS} map) "
        f"| sentiment mapped / native, {DEFAULT_CORPUS} map, scale 1 "
        "| its goals (≥0.7×; ppl ≤1.15; random ≤0.1×) "
        "| the same on the neutral map | on the reviews map (diagnostic) "
        f"| IOI mapped / native, {DEFAULT_CORPUS} map, scale 1 |",
        "|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]

    def ratios(rep: BuildReport, case: str, map_data: str, scale: float) -> str:
        return "; ".join(
            f"{m.analog}: {m.metrics['ratio_to_native']:.2f} "
            f"{_ci(m.intervals.get('ratio_to_native'))}"
            for m in rep.mapped
            if m.case == case and m.map_data == map_data and m.scale == scale
        )

    def goals(rep: BuildReport) -> str:
        return "; ".join(
            f"{m.analog}: {mapped_goal(m)}"
            for m in rep.mapped
            if m.case == "sentiment" and m.map_data == DEFAULT_CORPUS and m.scale == 1.0
        )

    for rep in reports:
        labelled = [r for r in rep.rows if r.expected is not None]
        right = sum(1 for r in labelled if r.right)
        above = sum(1 for r in rep.rows if control_above_partial(r))
        real = [r.low for r in rep.rows if r.expected == "transfers" and r.low is not None]
        ctrl = [
            r.decided_high
            for r in rep.rows
            if r.expected == "control" and r.decided_high is not None
        ]
        gap = f"{min(real) - max(ctrl):+.3f}" if real and ctrl else ""
        if real and not ctrl and any(r.expected == "control" for r in rep.rows):
            gap = "— (every control settled by its effects' intervals)"
        checks = [
            m.check for m in rep.mapped if m.check is not None and m.map_data == DEFAULT_CORPUS
        ]
        mapped_right = sum(1 for c in checks if c.right)
        lines.append(
            f"| {rep.label} | {right} of {len(labelled)} | {above} | {gap} "
            f"| {mapped_right} of {len(checks)} "
            f"| {ratios(rep, 'sentiment', DEFAULT_CORPUS, 1.0)} | {goals(rep)} "
            f"| {ratios(rep, 'sentiment', 'neutral', 1.0)} "
            f"| {ratios(rep, 'sentiment', 'reviews', 1.0)} "
            f"| {ratios(rep, 'ioi', DEFAULT_CORPUS, 1.0)} |"
        )
    return lines


def render(reports: list[BuildReport], command: str) -> str:
    out = [
        "# The transfer benchmark",
        "",
        "Generated by `benchmarks/transfer.py`; do not edit by hand. This page came from the "
        "command below, on the builds it names (each build's label says how it was made); "
        "`make bench` runs the same benchmark on the one build of `ANALOGLAB_HOME` instead:",
        "",
        "```bash",
        command,
        "```",
        "",
        *header(reports),
        "",
        "## Summary",
        "",
        *summary(reports),
        "",
        *METHOD_TEXT,
    ]
    for rep in reports:
        out += [
            "",
            f"## Build: {rep.label}",
            "",
            "### Ground truth: accuracy per behaviour",
            "",
            *ground_truth_table(rep),
            "",
            "### Cases",
            "",
            *case_table(rep),
            "",
            "### Confusion matrix (verdict × ground truth)",
            "",
            *confusion(rep.rows),
            "",
            "### Separation of real effects from their controls",
            "",
            *separations(rep.rows),
        ]
        wrong = wrong_notes(rep.rows)
        if wrong:
            out += ["", "### What the check said on the wrong cases", "", *wrong]
        if rep.mapped:
            out += [
                "",
                "### Mapped interventions (analog vector → frontier through the residual map)",
                "",
                *MAPPED_TEXT,
                "",
                *mapped_table(rep),
                "",
                "Mapped transfer checks (`compare`: the artifact as it is on its analog against "
                "the carried one on the frontier; the score is the carried artifact's ratio to "
                "the frontier's native vector, clipped to [0, 1]):",
                "",
                *mapped_check_table(rep),
            ]
        if rep.skipped:
            out += ["", "Specs that could not run:", ""]
            out += [f"- {s}" for s in rep.skipped]
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in rep.seconds.items())
        out += ["", f"Timings: {timing}."]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--home",
        action="append",
        default=[],
        help="A build's data folder, optionally =LABEL (repeatable); default: the settings'",
    )
    parser.add_argument("--analogs", nargs="+", default=["demo-analog-s", "demo-analog-m"])
    parser.add_argument("--frontier", default="demo-frontier")
    parser.add_argument("--device", default=None)
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine more threads wait on each other)",
    )
    parser.add_argument("--only", nargs="*", help="only these spec files (names)")
    parser.add_argument("--no-mapped", action="store_true", help="skip the mapped cases")
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="leave out the analogs' scratch twins (by default they are small models too)",
    )
    parser.add_argument("--markdown", type=Path, help="write the page here")
    parser.add_argument("--save", type=Path, help="also save the builds' results (JSON)")
    parser.add_argument(
        "--load",
        type=Path,
        action="append",
        default=[],
        help="put the builds of an earlier --save on the page too (repeatable; no rerun)",
    )
    parser.add_argument(
        "--write-specs", action="store_true", help="(re)write the generated specs and exit"
    )
    args = parser.parse_args()
    if args.write_specs:
        for path in write_specs():
            print(f"wrote {path.relative_to(ROOT)}")
        return
    quiet_transformers()
    torch.set_num_threads(args.threads)
    loaded = [BuildReport.from_json(b) for p in args.load for b in json.loads(p.read_text())]
    homes = [parse_home(h) for h in args.home]
    if not homes and not loaded:
        homes = [(get_settings().home, "this machine")]
    reports = [
        run_build(
            home,
            label,
            args.analogs,
            args.frontier,
            args.device,
            args.resamples,
            set(args.only) if args.only else None,
            not args.no_mapped,
            not args.no_baselines,
        )
        for home, label in homes
    ]
    if args.save:
        args.save.write_text(json.dumps([r.to_json() for r in reports], indent=1) + "\n")
        print(f"saved {args.save}")
    reports = [*loaded, *reports]
    command = (
        "python benchmarks/transfer.py "
        + " ".join(f'--home {r.home}="{r.label}"' for r in reports)
        + (f" --resamples {args.resamples}" if args.resamples != 200 else "")
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (" --no-baselines" if args.no_baselines else "")
    )
    command += f" --markdown {args.markdown or 'docs/transfer-benchmark.md'}"
    page = render(reports, command)
    print(page)
    if args.markdown:
        args.markdown.write_text(page)
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
