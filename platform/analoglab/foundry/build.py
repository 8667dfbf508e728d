"""The foundry build: corpus → tokenizer → frontier → distilled analogs → fidelity → publish
→ maps.

Each stage leaves its output in the preset's work folder (``<foundry_dir>/<preset>/``) and is
skipped when that output exists, and training resumes from its checkpoint, so an interrupted
build continues where it stopped and a finished one returns at once. Publishing puts the
frontier in the demo **lab site** (``<lab_sites_dir>/<lab>/``), the analogs in the public
**model store**, and the lab's entry (metadata and policy, no weights) in the catalog. The
last stage fits the residual map between each analog and the frontier into the lab site's
maps folder (``<lab site>/maps/<frontier>/<analog>.npz``), where the site's worker finds it for
mapped jobs; a build finished before that stage existed runs it alone.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analoglab.config import Settings, get_settings
from analoglab.errors import FoundryError
from analoglab.files import atomic_write, atomic_writer
from analoglab.foundry import corpus as corpus_mod
from analoglab.foundry import tasks as tasks_mod
from analoglab.foundry.presets import AnalogRecipe, Preset, llama_config
from analoglab.foundry.world import World
from analoglab.models.bundle import SITE_KEY
from analoglab.models.card import (
    AnalogCard,
    Architecture,
    BaselineFidelity,
    Distillation,
    Fidelity,
    LayerCKA,
    Release,
    TaskScore,
    write_card,
)
from analoglab.models.catalog import (
    DEFAULT_METHODS,
    FrontierLayout,
    FrontierModel,
    FrontierPolicy,
    Lab,
    save_lab,
)
from analoglab.models.store import write_folder
from analoglab.progress import Reporter, SilentReporter
from analoglab.signing import load_or_create_private_key, public_key_text

if TYPE_CHECKING:
    from analoglab.foundry.training import LMRun, Student, TeacherCache

STAGES = ("corpus", "tokenizer", "frontier", "distill", "fidelity", "publish", "maps")
#: Where the demo maps are fitted (relative depths) and on how many neutral texts.
MAP_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAP_TEXTS = 256
CHOICE_TASKS = ("sentiment", "ioi", "facts", "truth")
STATE_FILE = "build.json"
#: The teacher's top-k targets per distillation step (training.TeacherCache), in the work
#: folder; kept when only the analogs' recipe changes, so a retuned distillation reuses them.
TEACHER_CACHE = "teacher-cache"


@dataclass
class BuildResult:
    preset: str
    already_built: bool
    frontier_path: Path
    analog_paths: dict[str, Path]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def save_loss_curve(log: dict[str, Any], path: Path, title: str) -> None:
    """A PNG of the loss per step (skipped where matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, values in log["values"].items():
        ax.plot(log["steps"], values, label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def architecture_of(model: Any) -> Architecture:
    cfg = model.config
    return Architecture(
        model_type=cfg.model_type,
        layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        intermediate_size=getattr(cfg, "intermediate_size", None),
        vocab_size=cfg.vocab_size,
        context_length=getattr(cfg, "max_position_embeddings", None),
    )


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


class FoundryBuild:
    """Builds one preset. Stages can be run one by one (the benchmark does) or by :meth:`run`."""

    def __init__(
        self,
        preset: Preset,
        settings: Settings | None = None,
        device: str | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.preset = preset
        self.settings = settings or get_settings()
        self.device_preference = device or self.settings.device
        self.reporter: Reporter = reporter or SilentReporter()
        self.work = self.settings.foundry_path / preset.name
        self.lab_site = self.settings.lab_sites_path / preset.lab
        self.frontier_dir = self.lab_site / "models" / preset.frontier_name
        self.world = World.create(preset.world_seed)
        self._tokenizer: Any = None
        #: token id → person, the positions :meth:`heldout_agreement` reads apart (made once)
        self._copyable: dict[int, str] | None = None

    # -- state -------------------------------------------------------------------------------

    def analog_dir(self, recipe: AnalogRecipe) -> Path:
        return self.settings.models_path / self.preset.analog_name(recipe)

    def _state(self) -> dict[str, Any]:
        path = self.work / STATE_FILE
        if not path.is_file():
            return {}
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        except json.JSONDecodeError:
            return {}

    def _update_state(self, **values: Any) -> None:
        state = self._state()
        state.update(
            values,
            fingerprint=self.preset.fingerprint(),
            frontier_fingerprint=self.preset.frontier_fingerprint(),
            preset=self.preset.name,
        )
        _write_json(self.work / STATE_FILE, state)

    def is_complete(self) -> bool:
        return self._published() and self._maps_done()

    def _published(self) -> bool:
        """Every stage up to ``publish`` is done (a build from before the maps stage)."""
        state = self._state()
        return (
            bool(state.get("complete"))
            and state.get("fingerprint") == self.preset.fingerprint()
            and (self.frontier_dir / "config.json").is_file()
            and all((self.analog_dir(r) / "analog.json").is_file() for r in self.preset.analogs)
            and (self.settings.catalog_path / "labs" / f"{self.preset.lab}.json").is_file()
        )

    @property
    def maps_dir(self) -> Path:
        from analoglab.lab.config import MAPS

        return self.lab_site / MAPS

    def _maps_done(self) -> bool:
        from analoglab.lab.maps import map_path

        return all(
            map_path(self.maps_dir, self.preset.frontier_name, self.preset.analog_name(r)).is_file()
            for r in self.preset.analogs
        )

    @property
    def device(self) -> Any:
        from analoglab.models.loading import best_device

        return best_device(self.device_preference)

    # -- the whole build -----------------------------------------------------------------------

    def run(self, force: bool = False) -> BuildResult:
        from analoglab.models.loading import quiet_transformers

        quiet_transformers()
        t0 = time.perf_counter()
        self.settings.ensure_folders()
        if force:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.is_complete():
            return self._result(already=True, seconds=time.perf_counter() - t0)
        elif self._published():  # built before the maps stage existed: fit the maps only
            s0 = time.perf_counter()
            self.stage_maps()
            seconds = self._state().get("stage_seconds", {})
            self._update_state(stage_seconds=seconds | {"maps": round(time.perf_counter() - s0, 2)})
            return self._result(already=False, seconds=time.perf_counter() - t0)
        state = self._state()
        if state and state.get("fingerprint") != self.preset.fingerprint():
            if state.get("frontier_fingerprint") == self.preset.frontier_fingerprint():
                self.reporter.note(
                    f"preset {self.preset.name!r}: the analogs' recipe changed since the last "
                    "build; keeping its frontier and distilling again"
                )
                for stale in ("students", "fidelity.json"):
                    path = self.work / stale
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            else:
                self.reporter.note(
                    f"preset {self.preset.name!r} changed since its last build; starting again"
                )
                shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._update_state(complete=False)
        timings = {}
        for stage in STAGES:
            s0 = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            timings[stage] = round(time.perf_counter() - s0, 2)
        import torch

        self._update_state(
            complete=True, stage_seconds=timings, torch_threads=torch.get_num_threads()
        )
        result = self._result(already=False, seconds=time.perf_counter() - t0)
        result.stage_seconds = timings
        return result

    def _result(self, already: bool, seconds: float) -> BuildResult:
        fid_path = self.work / "fidelity.json"
        fidelity = json.loads(fid_path.read_text()) if fid_path.is_file() else {}
        return BuildResult(
            preset=self.preset.name,
            already_built=already,
            frontier_path=self.frontier_dir,
            analog_paths={
                self.preset.analog_name(r): self.analog_dir(r) for r in self.preset.analogs
            },
            seconds=seconds,
            stage_seconds=self._state().get("stage_seconds", {}),
            fidelity=fidelity,
        )

    # -- stages --------------------------------------------------------------------------------

    def stage_corpus(self) -> None:
        folder = self.work / "corpus"
        if (folder / "manifest.json").is_file():
            return
        p = self.preset
        self.reporter.note(f"[{p.name}] writing the toy-world corpus")
        mix = p.mix or None
        train = list(corpus_mod.generate(p.train_documents, p.seed, self.world, mix))
        heldout = list(corpus_mod.generate(p.heldout_documents, p.seed + 1000, self.world, mix))
        folder.mkdir(parents=True, exist_ok=True)
        for name, docs in (("train", train), ("heldout", heldout)):
            atomic_write(folder / f"{name}.txt", "\n".join(docs) + "\n")
        _write_json(
            folder / "manifest.json",
            {
                "train_documents": len(train),
                "heldout_documents": len(heldout),
                "train_sha256": corpus_mod.corpus_hash(train),
                "heldout_sha256": corpus_mod.corpus_hash(heldout),
                "seed": p.seed,
            },
        )

    def _documents(self, split: str) -> list[str]:
        return (self.work / "corpus" / f"{split}.txt").read_text().splitlines()

    def stage_tokenizer(self) -> None:
        from analoglab.foundry.tokenizer import train_tokenizer

        tok_dir, tokens_dir = self.work / "tokenizer", self.work / "tokens"
        if (tok_dir / "tokenizer.json").is_file() and (tokens_dir / "heldout.npy").is_file():
            return
        p = self.preset
        self.reporter.note(f"[{p.name}] training the tokenizer (BPE, vocabulary ≤ {p.vocab_size})")
        train = self._documents("train")
        tokenizer = train_tokenizer(train[: p.tokenizer_documents], p.vocab_size)
        write_folder(tok_dir, lambda d: tokenizer.save_pretrained(str(d)))
        tokens_dir.mkdir(parents=True, exist_ok=True)
        for split in ("train", "heldout"):
            docs = train if split == "train" else self._documents("heldout")
            ids = self.encode_documents(tokenizer, docs)
            with atomic_writer(tokens_dir / f"{split}.npy", "wb") as fh:
                np.save(fh, ids)
        self._tokenizer = tokenizer

    @staticmethod
    def encode_documents(tokenizer: Any, docs: list[str]) -> np.ndarray:
        """One stream of token ids: ``<bos> document <eos>`` for each document."""
        encoded = tokenizer(docs, add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token_id
        dtype = np.uint16 if len(tokenizer) < 65535 else np.int32
        return np.concatenate([np.asarray([*ids, eos], dtype=dtype) for ids in encoded])

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from analoglab.foundry.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.work / "tokenizer")
        return self._tokenizer

    def tokens(self, split: str) -> np.ndarray:
        tokens: np.ndarray = np.load(self.work / "tokens" / f"{split}.npy")
        return tokens

    def _context(self) -> int:
        return max(256, 2 * self.preset.seq_len)

    def stage_frontier(self) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from analoglab.foundry.training import LMRun, train_lm

        final = self.work / "frontier" / "final"
        if (final / "config.json").is_file():
            return
        p = self.preset
        torch.manual_seed(p.seed)
        model = LlamaForCausalLM(llama_config(p.frontier, self.tokenizer, self._context()))
        self.reporter.note(
            f"[{p.name}] training the frontier: {count_parameters(model):,} parameters, "
            f"{p.frontier_steps} steps of {p.batch_size}×{p.seq_len} tokens on {self.device}"
        )
        run = LMRun(
            steps=p.frontier_steps,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            lr=p.frontier_lr,
            hold=p.frontier_hold,
            seed=p.seed,
            checkpoint_every=p.checkpoint_every,
        )
        ckpt = self.work / "frontier" / "checkpoint.pt"
        bar = self.reporter.steps(f"{p.frontier_name}", p.frontier_steps)
        log = train_lm(model, self.tokens("train"), run, ckpt, self.device, bar)

        def fill(d: Path) -> None:
            model.save_pretrained(str(d))
            self.tokenizer.save_pretrained(str(d))
            _write_json(d / "training_log.json", log.to_dict())
            save_loss_curve(log.to_dict(), d / "loss.png", f"{p.frontier_name} training loss")

        write_folder(final, fill)
        self._update_state(
            frontier_trained=dt.date.today().isoformat(), frontier_seconds=round(log.seconds, 1)
        )
        ckpt.unlink(missing_ok=True)

    def _load_frontier(self) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(self.work / "frontier" / "final"), local_files_only=True
        )
        return model.to(self.device).eval()

    def _frontier_layout(self) -> FrontierLayout:
        """The frontier's verified layout as the catalog publishes it (one self-test on a few
        random tokens), so the queue can refuse a job needing a site it does not offer."""
        from analoglab.interventions import verify_layout

        return FrontierLayout.from_report(verify_layout(self._load_frontier()).to_dict())

    def _student_names(self) -> list[tuple[str, AnalogRecipe, str]]:
        """(student name, recipe, mode) for each analog and each scratch baseline."""
        out = []
        for r in self.preset.analogs:
            out.append((self.preset.analog_name(r), r, "distill"))
            if r.scratch_baseline:
                out.append((f"{self.preset.analog_name(r)}-scratch", r, "scratch"))
        return out

    def new_student(
        self, name: str, recipe: AnalogRecipe, mode: str, teacher: Any, seed: int
    ) -> Student:
        """A student of ``recipe`` as the distill stage starts it (``mode`` ``distill`` or
        ``scratch``): random weights from torch seed ``seed``, and for a distilled one the
        recipe's start (the teacher's embeddings) and its hidden-state projections."""
        import torch
        from transformers import LlamaForCausalLM

        from analoglab.foundry.training import (
            Student,
            init_from_teacher_embeddings,
            prepare_student,
        )

        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(recipe.shape, self.tokenizer, self._context()))
        s = Student(
            name=name,
            model=model,
            mode=mode,
            temperature=recipe.temperature,
            ce_weight=recipe.ce_weight,
            hidden_weight=recipe.hidden_weight if mode == "distill" else 0.0,
            lr=recipe.scratch_lr if mode == "scratch" else recipe.lr,
        )
        basis = None
        if mode == "distill" and recipe.init == "teacher-embeddings":
            basis = init_from_teacher_embeddings(model, teacher)
        prepare_student(s, teacher.config.hidden_size, teacher.config.num_hidden_layers, basis)
        return s

    def distill_run(self) -> LMRun:
        """The distillation run of the preset (steps, batches, rates, the batch seed)."""
        from analoglab.foundry.training import LMRun

        p = self.preset
        return LMRun(
            steps=p.distill_steps,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            lr=p.distill_lr,
            seed=p.seed + 7,
            checkpoint_every=p.checkpoint_every,
        )

    def teacher_cache(
        self, students: list[Student], run: LMRun, tokens: np.ndarray, *, create: bool = True
    ) -> TeacherCache | None:
        """The teacher cache that serves ``students`` on ``run`` (its key as
        :func:`~analoglab.foundry.training.cache_key` makes it). ``create``: open it, deleting
        the build's caches under other keys (the distill stage); otherwise the cache already
        on disk under that key, or None, touching nothing (a benchmark reading the build)."""
        from analoglab.foundry.training import (
            TeacherCache,
            cache_key,
            matched_teacher_layers,
            open_teacher_cache,
        )
        from analoglab.models.loading import weights_sha256

        p = self.preset
        layers = matched_teacher_layers(students)
        key = cache_key(
            weights_sha256(self.work / "frontier" / "final"),
            tokens,
            run,
            p.teacher_top_k,
            layers,
            p.hidden_positions,
        )
        if create:
            return open_teacher_cache(
                self.work / TEACHER_CACHE, key, p.teacher_top_k, layers, p.hidden_positions
            )
        folder = self.work / TEACHER_CACHE / key
        if not folder.is_dir():
            return None
        return TeacherCache(folder, p.teacher_top_k, layers, p.hidden_positions)

    def stage_distill(self) -> None:
        from analoglab.foundry.training import train_students

        students_dir = self.work / "students"
        names = self._student_names()
        if all((students_dir / n / "config.json").is_file() for n, _, _ in names):
            return
        p = self.preset
        teacher = self._load_frontier()
        students = [
            # A scratch baseline starts from the same weights as its distilled twin.
            self.new_student(
                name,
                recipe,
                mode,
                teacher,
                p.seed + 1 + i // 2 if mode == "scratch" else p.seed + 1 + i,
            )
            for i, (name, recipe, mode) in enumerate(names)
        ]
        self.reporter.note(
            f"[{p.name}] distilling {len(names)} students together (one teacher pass serves all): "
            + ", ".join(f"{s.name} ({count_parameters(s.model):,})" for s in students)
        )
        run = self.distill_run()
        tokens = self.tokens("train")
        cache = self.teacher_cache(students, run, tokens)
        assert cache is not None  # created
        if not all(cache.has(step) for step in range(p.distill_steps)):
            self.reporter.note(
                f"[{p.name}] caching the teacher's top-{p.teacher_top_k} next-token "
                f"log-probabilities for {p.distill_steps} steps"
                + (f" and its residual stream after blocks {cache.layers}" if cache.layers else "")
            )
            cache.fill(
                teacher, tokens, run, self.device, self.reporter.steps("teacher", p.distill_steps)
            )
        ckpt = students_dir / "checkpoint.pt"
        bar = self.reporter.steps("analogs", p.distill_steps)
        logs = train_students(
            teacher,
            students,
            tokens,
            run,
            ckpt,
            self.device,
            bar,
            cache,
            p.teacher_top_k,
            p.hidden_positions,
        )
        for s in students:
            log = logs[s.name].to_dict()

            def fill(d: Path, s: Student = s, log: dict[str, Any] = log) -> None:
                s.model.save_pretrained(str(d))
                self.tokenizer.save_pretrained(str(d))
                _write_json(d / "training_log.json", log)
                _write_json(
                    d / "student.json", {"mode": s.mode, "matched_layers": s.matched_layers}
                )
                save_loss_curve(log, d / "loss.png", f"{s.name} ({s.mode})")

            write_folder(students_dir / s.name, fill)
        ckpt.unlink(missing_ok=True)

    def heldout_agreement(
        self, frontier: Any, model: Any, heldout: np.ndarray | None = None
    ) -> dict[str, float]:
        """``model`` against ``frontier`` on the build's held-out windows (``heldout``: the
        held-out tokens, read from the build when not given), as the fidelity stage measures
        it: next-token KL (also apart on the positions whose next token is a name already
        named in its document) and top-1 agreement."""
        from analoglab.foundry.fidelity import first_token_ids, next_token_agreement
        from analoglab.foundry.world import PEOPLE

        tok = self.tokenizer
        if self._copyable is None:
            # each name's token, with and without its leading space (one token each)
            self._copyable = {
                i: person
                for spelled in ("{}", " {}")
                for person, i in zip(
                    PEOPLE, first_token_ids(tok, [spelled.format(p) for p in PEOPLE]), strict=True
                )
            }
        return next_token_agreement(
            frontier,
            model,
            self.tokens("heldout") if heldout is None else heldout,
            self.preset.seq_len,
            max_windows=self.preset.heldout_windows,
            copyable=self._copyable,
            bos=tok.bos_token_id,
        )

    def stage_fidelity(self) -> None:
        from transformers import AutoModelForCausalLM

        from analoglab.foundry.fidelity import (
            behaviour_agreement,
            choices,
            representation_similarity,
        )
        from analoglab.foundry.training import matched_depths

        path = self.work / "fidelity.json"
        if path.is_file():
            return
        p = self.preset
        self.reporter.note(f"[{p.name}] measuring fidelity on held-out text and the task sets")
        frontier = self._load_frontier()
        sets = {
            t: tasks_mod.task_set(t, p.eval_items, world=self.world).items for t in CHOICE_TASKS
        }
        tok = self.tokenizer
        frontier_choices = {t: choices(frontier, tok, items) for t, items in sets.items()}
        frontier_tasks = {t: sum(c) / len(c) for t, c in frontier_choices.items()}
        heldout = self.tokens("heldout")
        result: dict[str, Any] = {"frontier": {"tasks": frontier_tasks}, "students": {}}
        for name, _, mode in self._student_names():
            model = (
                AutoModelForCausalLM.from_pretrained(
                    str(self.work / "students" / name), local_files_only=True
                )
                .to(self.device)
                .eval()
            )
            agreement = self.heldout_agreement(frontier, model, heldout)
            pairs = matched_depths(
                model.config.num_hidden_layers, frontier.config.num_hidden_layers
            )
            cka = representation_similarity(
                frontier, model, heldout, p.seq_len, pairs, max_windows=p.heldout_windows
            )
            chosen = {t: choices(model, tok, items) for t, items in sets.items()}
            result["students"][name] = {
                "mode": mode,
                **agreement,
                "cka": sum(cka) / len(cka),
                "cka_layers": [[j, k, c] for (j, k), c in zip(pairs, cka, strict=True)],
                "tasks": {t: sum(c) / len(c) for t, c in chosen.items()},
                "task_agreement": {
                    t: behaviour_agreement(c, frontier_choices[t]) for t, c in chosen.items()
                },
            }
        result["items_per_task"] = p.eval_items
        _write_json(path, result)

    def stage_publish(self) -> None:
        p = self.preset
        fidelity = json.loads((self.work / "fidelity.json").read_text())
        state = self._state()
        frontier_date = dt.date.fromisoformat(
            state.get("frontier_trained", dt.date.today().isoformat())
        )
        frontier_src = self.work / "frontier" / "final"
        self.reporter.note(f"[{p.name}] publishing: frontier → lab site, analogs → model store")
        write_folder(self.frontier_dir, lambda d: _copy_folder(frontier_src, d))
        self._write_lab_site_config()

        from transformers import AutoConfig

        from analoglab.models.loading import weights_sha256

        f_cfg = AutoConfig.from_pretrained(str(frontier_src), local_files_only=True)
        f_params = _parameters_from_safetensors(frontier_src)
        manifest = json.loads((self.work / "corpus" / "manifest.json").read_text())
        today = dt.date.today()
        for recipe in p.analogs:
            name = p.analog_name(recipe)
            src = self.work / "students" / name
            student_info = json.loads((src / "student.json").read_text())
            log = json.loads((src / "training_log.json").read_text())
            f_s = fidelity["students"][name]
            scratch = fidelity["students"].get(f"{name}-scratch")
            s_cfg = AutoConfig.from_pretrained(str(src), local_files_only=True)
            params = _parameters_from_safetensors(src)
            card = AnalogCard(
                name=name,
                lab=p.lab,
                frontier=p.frontier_name,
                description=recipe.description,
                architecture=_architecture(s_cfg),
                parameters=params,
                frontier_parameters=f_params,
                parameter_ratio=round(params / f_params, 5),
                distillation=Distillation(
                    method=recipe.method,
                    teacher=p.frontier_name,
                    temperature=recipe.temperature,
                    ce_weight=recipe.ce_weight,
                    hidden_weight=recipe.hidden_weight,
                    matched_layers=[tuple(x) for x in student_info["matched_layers"]],
                    data=f"Analog Lab foundry toy-world corpus, {manifest['train_documents']:,} "
                    f"documents, seed {manifest['seed']}",
                    data_sha256=manifest["train_sha256"],
                    steps=p.distill_steps,
                    batch_size=p.batch_size,
                    seq_len=p.seq_len,
                    tokens_seen=p.distill_steps * p.batch_size * p.seq_len,
                    seed=p.seed + 7,
                    seconds=round(log.get("seconds", 0.0), 1),
                    lr=recipe.lr or p.distill_lr,
                    teacher_top_k=p.teacher_top_k,
                    init=recipe.init,
                ),
                fidelity=Fidelity(
                    heldout_tokens=int(f_s["tokens"]),
                    kl=round(f_s["kl"], 5),
                    top1_agreement=round(f_s["top1_agreement"], 5),
                    tasks={
                        t: TaskScore(
                            frontier=fidelity["frontier"]["tasks"][t],
                            analog=f_s["tasks"][t],
                            items=fidelity["items_per_task"],
                            agreement=f_s.get("task_agreement", {}).get(t),
                        )
                        for t in CHOICE_TASKS
                    },
                    cka=round(f_s["cka"], 5) if "cka" in f_s else None,
                    cka_layers=[
                        LayerCKA(analog_layer=j, frontier_layer=k, cka=round(c, 5))
                        for j, k, c in f_s.get("cka_layers", [])
                    ],
                    scratch_baseline=BaselineFidelity(
                        kl=round(scratch["kl"], 5),
                        top1_agreement=round(scratch["top1_agreement"], 5),
                        tasks=scratch["tasks"],
                        cka=round(scratch["cka"], 5) if "cka" in scratch else None,
                        task_agreement=scratch.get("task_agreement", {}),
                    )
                    if scratch
                    else None,
                ),
                release=Release(
                    date=today, frontier_date=frontier_date, lag_days=(today - frontier_date).days
                ),
                weights_sha256=weights_sha256(src),
            )

            def fill(d: Path, src: Path = src, card: AnalogCard = card) -> None:
                for item in src.iterdir():
                    if item.name != "student.json":
                        shutil.copy2(item, d / item.name)
                write_card(d, card)

            write_folder(self.analog_dir(recipe), fill)
        lab = Lab(
            id=p.lab,
            name=f"Demo lab ({p.name} preset)",
            description="The foundry's miniature lab: its frontier stays on the lab site; "
            "its analogs are public.",
            # The lab site's signing key stays on the site; the catalog carries its public half.
            public_key=public_key_text(load_or_create_private_key(self.lab_site / SITE_KEY)),
            frontiers=[
                FrontierModel(
                    id=p.frontier_name,
                    lab=p.lab,
                    description="Llama-architecture frontier trained from scratch on the toy "
                    f"world ({p.frontier_steps} steps).",
                    architecture=_architecture(f_cfg),
                    parameters=f_params,
                    trained=frontier_date,
                    capabilities={t: round(v, 4) for t, v in fidelity["frontier"]["tasks"].items()},
                    # The demo site holds a residual map per analog (the maps stage), so
                    # its frontier also takes the mapped methods.
                    policy=FrontierPolicy(
                        allowed_methods=list(
                            dict.fromkeys([*DEFAULT_METHODS, "mapped_steering", "mapped_probe"])
                        )
                    ),
                    layout=self._frontier_layout(),
                )
            ],
        )
        save_lab(lab, self.settings)

    def stage_maps(self) -> None:
        """The residual map between each analog and the frontier, in the lab site's maps
        folder (as ``analoglab lab map fit`` stores it); one already fitted on these very
        weights is kept."""
        from analoglab.lab.maps import fit_site_map, list_maps
        from analoglab.models.loading import weights_sha256

        p = self.preset
        frontier_sha = weights_sha256(self.frontier_dir)
        have = {
            m.analog: m.summary
            for m in list_maps(self.maps_dir)
            if m.frontier == p.frontier_name and not m.problem
        }
        for recipe in p.analogs:
            name = p.analog_name(recipe)
            meta = have.get(name, {})
            analog_sha = weights_sha256(self.analog_dir(recipe))
            fitted = (meta.get("frontier_weights_sha256"), meta.get("analog_weights_sha256"))
            if fitted == (frontier_sha, analog_sha):
                continue
            self.reporter.note(f"[{p.name}] fitting the residual map {name} → {p.frontier_name}")
            fit_site_map(
                self.maps_dir,
                frontier=p.frontier_name,
                weights=self.frontier_dir,
                sha256=frontier_sha,
                analog=name,
                depths=list(MAP_DEPTHS),
                texts=MAP_TEXTS,
                seed=p.seed,
                device=str(self.device),
                settings=self.settings,
            )

    def _write_lab_site_config(self) -> None:
        text = (
            "# The demo lab site: where its frontier weights live. Never copied to the hub.\n"
            f'lab = "{self.preset.lab}"\n'
            "# Residual maps between the analogs and the frontier (analoglab lab map fit);\n"
            "# like the weights, they stay here.\n"
            'maps = "maps"\n\n'
            f'[models."{self.preset.frontier_name}"]\n'
            f'path = "models/{self.preset.frontier_name}"\n\n'
            "[executor]\n"
            'kind = "local"\n\n'
            "# A demo frontier's per-item outputs may be public: its results carry their\n"
            "# bootstrap, so transfer checks get paired intervals (off by default; docs/lab.md).\n"
            "[release]\n"
            "release_bootstrap = true\n"
        )
        atomic_write(self.lab_site / "lab.toml", text)


def _copy_folder(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def _architecture(cfg: Any) -> Architecture:
    return Architecture(
        model_type=cfg.model_type,
        layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        intermediate_size=getattr(cfg, "intermediate_size", None),
        vocab_size=cfg.vocab_size,
        context_length=getattr(cfg, "max_position_embeddings", None),
    )


def _parameters_from_safetensors(folder: Path) -> int:
    """Parameter count read from the weight file's header (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="np") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
            shape = fh.get_slice(key).get_shape()
            total += int(np.prod(shape)) if shape else 1
    return total


def build(
    preset: Preset,
    settings: Settings | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> BuildResult:
    """Build ``preset`` (or return at once if it is built). See :class:`FoundryBuild`."""
    if preset.frontier_steps < 1 or preset.distill_steps < 1:
        raise FoundryError("a preset needs at least one training step for each model")
    return FoundryBuild(preset, settings, device, reporter).run(force=force)
