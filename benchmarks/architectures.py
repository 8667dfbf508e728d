"""Every causal LM transformers knows, built tiny: is its hook layout found, verified, right?

    python benchmarks/architectures.py [--only TYPE ...] [--markdown OUT] [--json OUT]

For every ``model_type`` of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` this builds a
tiny random model from a config made here (nothing is downloaded), infers and verifies its
layout (:func:`analoglab.interventions.verify_layout`), captures every site it offers, and
runs two experiment specs on it (activation statistics, steering) with a small tokenizer
trained here. Then it checks the layout **independently of the self-test**, against
transformers' ``output_hidden_states`` and weight surgery:

- ``hook_resid_pre`` of block 0 and ``hook_resid_post`` of every block are transformers'
  hidden states (the last one before or after the final norm);
- with block 0's attention output projection zeroed (weight surgery), the step of the stream
  ``hidden_states[1] - hidden_states[0]`` is ``hook_attn_out + hook_mlp_out``, and where that
  step is all MLP, ``hook_attn_out`` reads zero;
- with every weight of block 0's submodules outside its attention and its norms zeroed (the
  MLP silenced), ``hook_mlp_out`` reads zero and ``hook_attn_out`` is the stream's step;
- adding ``v`` at ``hook_mlp_out`` of block 0 moves ``hidden_states[1]`` by exactly ``v``;
- zero-ablating head 0 at ``attn.hook_z`` gives the logits of zeroing that head's columns
  of the projection weight.

Each model type lands in one of: **verified** (every check passes; sites a block does not
have are refused with their reason), **refused** (the layout is refused as a whole, with the
reason), **wrong** (an independent check fails: must be 0), or **does not build** (the tiny
config cannot be made or run on this machine, with why).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from analoglab.experiments.runner import run
from analoglab.experiments.spec import parse_spec
from analoglab.foundry.tokenizer import train_tokenizer
from analoglab.interventions import (
    SITES,
    InterventionError,
    LayoutReport,
    ablate,
    add_vector,
    capture,
    layout_of,
    verify_layout,
)
from analoglab.models.loading import LoadedModel

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

VOCAB = 320
MAX_PARAMETERS = 8_000_000
SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": VOCAB,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 0,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "use_mamba_kernels": False,
}
# Where the common sizes do not fit: keys that must go, or more a tiny config needs.
TWEAKS: dict[str, dict[str, Any]] = {
    **{  # multi-head latent attention: its head sizes come from the q/k/v head dims
        mla: {"head_dim": None}
        for mla in (
            "deepseek_v3",
            "deepseek_v32",
            "glm4_moe_lite",
            "glm_moe_dsa",
            "longcat_flash",
            "youtu",
            "axk1",
            "axk2",
        )
    },
    "falcon": {"head_dim": None, "parallel_attn": True, "new_decoder_architecture": False},
    "granite": {"residual_multiplier": 0.22},
    "granitemoe": {"residual_multiplier": 0.22},
    "gptj": {"rotary_dim": 8},
    "codegen": {"rotary_dim": 8},
    "gpt_neo": {"attention_types": [[["global", "local"], 1], [["global"], 1]]},
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "mamba_d_state": 8,
        "mamba_dt_rank": 4,
    },
    "bamba": {
        "attn_layer_indices": [1],
        "mamba_d_state": 8,
        "mamba_n_heads": 8,
        "mamba_d_head": 16,
        "mamba_n_groups": 1,
    },
    "recurrent_gemma": {
        "block_types": ["recurrent", "attention", "recurrent"],
        "lru_width": 64,
        "attention_window_size": 16,
    },
    "qwen3_5_text": {"layer_types": ["linear_attention", "full_attention", "linear_attention"]},
    "qwen3_5_moe_text": {"layer_types": ["linear_attention", "full_attention", "linear_attention"]},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention", "linear_attention"]},
    "granitemoehybrid": {
        "layer_types": ["mamba", "attention", "mamba"],
        "mamba_d_state": 8,
        "mamba_n_heads": 8,
        "mamba_d_head": 16,
        "mamba_n_groups": 1,
    },
}

TEXTS = [
    "the soup was good and the bread was bad",
    "When Mary and John went to the store, John gave a drink to Mary",
    "a happy song made the children smile",
    "the film was dull and the ending was sad",
]


@dataclass
class Outcome:
    model_type: str
    verdict: str  # verified | refused | wrong | does not build
    why: str = ""
    parameters: int = 0
    seconds: float = 0.0
    sites: dict[str, str] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)
    meaning: str = ""


def tiny_config(model_type: str) -> Any:
    kwargs = {**SIZES, **TWEAKS.get(model_type, {})}
    return AutoConfig.for_model(model_type, **{k: v for k, v in kwargs.items() if v is not None})


def build(model_type: str) -> tuple[nn.Module | None, str, int]:
    """A tiny random model, or None with why it does not build."""
    try:
        config = tiny_config(model_type)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in meta.parameters())
        if n > MAX_PARAMETERS:
            return None, f"not tiny: {n:,} parameters at these sizes (its own size keys)", n
        torch.manual_seed(0)
        model: nn.Module = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            model(input_ids=torch.randint(3, VOCAB, (2, 6)))
        return model, "", n
    except Exception as exc:
        return None, _first_line(exc), 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _rel(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.float() - b.float()).abs().max()) / max(float(b.float().abs().max()), 1e-6)


TOL = 1e-3


def independent_checks(model: nn.Module, ids: Tensor) -> list[str]:
    """What is wrong with the layout, judged by transformers and weight surgery alone."""
    wrong: list[str] = []
    layout = layout_of(model)
    n = layout.n_layers
    offered = {(b, s) for b in range(n) for s in SITES if layout.supports(s, b)}

    def run_capture(
        m: nn.Module, sites: tuple[str, ...], **kw: Any
    ) -> tuple[dict[str, Tensor], Any]:
        names = [f"blocks.{b}.{s}" for b in range(n) for s in sites if (b, s) in offered]
        with torch.no_grad(), capture(m, names) as cache:
            out = m(input_ids=ids, **kw)
        return {k: v.clone() for k, v in cache.items()}, out

    cache, out = run_capture(
        model, ("hook_resid_pre", "hook_resid_post"), output_hidden_states=True
    )
    hidden = out.hidden_states
    if _rel(cache["blocks.0.hook_resid_pre"], hidden[0]) > TOL:
        wrong.append("hook_resid_pre of block 0 is not hidden_states[0]")
    for i in range(n - 1):
        if _rel(cache[f"blocks.{i}.hook_resid_post"], hidden[i + 1]) > TOL:
            wrong.append(f"hook_resid_post of block {i} is not hidden_states[{i + 1}]")
    last = cache[f"blocks.{n - 1}.hook_resid_post"]
    if min(_rel(last, hidden[-1]), _rel(layout.final_norm(last), hidden[-1])) > TOL:
        wrong.append("the last block's hook_resid_post is not hidden_states[-1], normed or not")

    both = (0, "hook_attn_out") in offered and (0, "hook_mlp_out") in offered
    if both and (0, "attn.hook_z") in offered and n > 1:
        surgery = copy.deepcopy(model)
        proj = layout_of(surgery).module(0, "attn.hook_z")
        with torch.no_grad():
            for p in proj.parameters():
                p.zero_()
        got, out = run_capture(
            surgery, ("hook_attn_out", "hook_mlp_out"), output_hidden_states=True
        )
        step = out.hidden_states[1] - out.hidden_states[0]
        attn, mlp = got["blocks.0.hook_attn_out"], got["blocks.0.hook_mlp_out"]
        if _rel(attn + mlp, step) > TOL:
            wrong.append("with o_proj zeroed, attn_out + mlp_out is not the stream's step")
        elif _rel(mlp, step) <= TOL and float(attn.abs().max()) > TOL * float(step.abs().max()):
            wrong.append("with o_proj zeroed the step is all MLP, yet hook_attn_out is not zero")

    if both and (0, "attn.hook_z") in offered and n > 1:
        # Silence the MLP: zero every weight of block 0 outside its attention and its norms.
        surgery = copy.deepcopy(model)
        block = layout_of(surgery).blocks[0]
        attention = layout_of(surgery).plan.block_plans[0].sites["attn.hook_z"].path
        attention = attention.split(".")[0]
        with torch.no_grad():
            for name, module in block.named_modules():
                inside = name == attention or name.startswith(attention + ".")
                # the block's own parameters (doge's residual gains) are not the MLP's
                if not name or inside or "norm" in type(module).__name__.lower():
                    continue
                for p in module.parameters(recurse=False):
                    p.zero_()
        got, out = run_capture(
            surgery, ("hook_attn_out", "hook_mlp_out"), output_hidden_states=True
        )
        step = out.hidden_states[1] - out.hidden_states[0]
        if float(got["blocks.0.hook_mlp_out"].abs().max()) > TOL * float(step.abs().max()):
            wrong.append("with the MLP's weights zeroed, hook_mlp_out is not zero")
        if _rel(got["blocks.0.hook_attn_out"], step) > TOL:
            wrong.append("with the MLP's weights zeroed, hook_attn_out is not the stream's step")

    if (0, "hook_mlp_out") in offered and n > 1:
        vector = torch.randn(layout.d_model, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            before = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
            with add_vector(model, "blocks.0.hook_mlp_out", vector):
                after = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        if _rel(after - before, vector.expand_as(before)) > TOL:
            wrong.append("adding v at hook_mlp_out does not move hidden_states[1] by v")

    if (0, "attn.hook_z") in offered:
        with torch.no_grad(), ablate(model, "blocks.0.attn.hook_z", heads=[0]):
            ablated = model(input_ids=ids).logits
        surgery = copy.deepcopy(model)
        proj = layout_of(surgery).module(0, "attn.hook_z")
        weight = proj.weight
        d = layout.d_head
        with torch.no_grad():
            if isinstance(proj, nn.Linear):
                weight[:, :d] = 0
            else:  # Conv1D: [in, out]
                weight[:d, :] = 0
            zeroed = surgery(input_ids=ids).logits
        if _rel(ablated, zeroed) > TOL:
            wrong.append("ablating head 0 at hook_z is not zeroing its projection columns")
    return wrong


def specs(loaded: LoadedModel) -> dict[str, str]:
    """The two specs run on the model: 'ok', or why not."""
    found: dict[str, str] = {}
    ids = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    try:  # specs run left-padded batches: does the model itself, with no hooks?
        with torch.no_grad():
            loaded.model(input_ids=ids, attention_mask=mask)
    except Exception as exc:
        why = f"the model fails a left-padded batch with no hooks: {_first_line(exc)}"
        return {"activation_stats": why, "steering": why}
    cases = {
        "activation_stats": {
            "method": "activation_stats",
            "data": {"kind": "prompts", "prompts": TEXTS},
            "position": "all",
        },
        "steering": {
            "method": "steering",
            "contrast": {
                "kind": "pairs",
                "pairs": [{"positive": TEXTS[0], "negative": TEXTS[3]}],
            },
            "evaluate": {"kind": "prompts", "prompts": TEXTS[:2]},
            "target": " good",
            "foil": " bad",
            "scales": [-2, 0, 2],
            "batch_size": 4,
        },
    }
    for name, data in cases.items():
        try:
            result = run(parse_spec(data), loaded)
            finite = all(math.isfinite(v) for v in result.metrics.values())
            found[name] = "ok" if finite else "ran; a metric is not finite"
        except Exception as exc:
            found[name] = _first_line(exc)
    return found


class TimedOut(BaseException):  # not caught by the handlers for model errors
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise TimedOut


def one(model_type: str, tokenizer: Any, limit: int = 60) -> Outcome:
    """:func:`judge` within ``limit`` seconds (a model that hangs under hooks is reported)."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    start = time.perf_counter()
    try:
        return judge(model_type, tokenizer)
    except TimedOut:
        return Outcome(
            model_type, "timed out", f"no verdict within {limit} s", 0, time.perf_counter() - start
        )
    finally:
        signal.alarm(0)


def judge(model_type: str, tokenizer: Any) -> Outcome:
    start = time.perf_counter()
    model, why, n = build(model_type)
    if model is None:
        return Outcome(model_type, "does not build", why, n, time.perf_counter() - start)
    outcome = Outcome(model_type, "verified", parameters=n)
    verified = False
    try:
        report: LayoutReport = verify_layout(model)
        if report.refused:
            outcome.verdict, outcome.why = "refused", report.refused
        else:
            verified = True  # from here on, an InterventionError is the layout being wrong
            outcome.sites = {s: str(v) for s, v in report.sites.items()}
            outcome.meaning = report.meanings[0] if report.meanings else ""
            if report.failures:
                outcome.why = "; ".join(str(c) for c in report.failures[:2])
            layout = layout_of(model)
            names = [
                f"blocks.{b}.{s}"
                for b in range(layout.n_layers)
                for s in report.sites
                if layout.supports(s, b)
            ]
            ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
            with torch.no_grad(), capture(model, names) as cache:
                model(input_ids=ids)
            missing = set(names) - set(cache)
            wrong = independent_checks(model, ids)
            if missing:
                wrong.append(f"sites offered but not captured: {sorted(missing)[:3]}")
            if wrong:
                outcome.verdict, outcome.why = "wrong", "; ".join(wrong)
            loaded = LoadedModel(model, tokenizer, model_type, Path("."), "0" * 64)
            outcome.specs = specs(loaded)
    except InterventionError as exc:
        outcome.verdict = "wrong" if verified else "refused"
        outcome.why = str(exc)
    except TimedOut:
        raise
    except Exception as exc:
        outcome.verdict, outcome.why = "wrong", f"crashed: {_first_line(exc)}"
    outcome.seconds = time.perf_counter() - start
    return outcome


def machine() -> str:
    return (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def markdown(outcomes: list[Outcome], seconds: float) -> str:
    counts = {
        k: sum(o.verdict == k for o in outcomes)
        for k in ("verified", "refused", "wrong", "timed out", "does not build")
    }
    specs_ok = sum(all(v == "ok" for v in o.specs.values()) and bool(o.specs) for o in outcomes)
    lines = [
        f"Generated by `python benchmarks/architectures.py` ({machine()}; "
        f"{len(outcomes)} model types in {seconds:.0f} s).",
        "",
        f"**{counts['verified']} verified, {counts['refused']} refused with a reason, "
        f"{counts['wrong']} wrong, {counts['timed out']} timed out, "
        f"{counts['does not build']} do not build tiny here**; "
        f"both specs ran on {specs_ok} of the verified.",
        "",
        "| `model_type` | verdict | block 0 adds | sites not at every block | specs |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.verdict != "verified":
            continue
        partial = [
            f"`{s}` {v}"
            for s, v in o.sites.items()
            if v != "every block" and not s.startswith("mlp.")
        ]
        moe = (
            "MoE router sites"
            if o.sites.get("mlp.hook_router_logits", "").startswith(("every", "blocks"))
            else ""
        )
        spec = ", ".join(f"{k}: {v}" for k, v in o.specs.items() if v != "ok") or "both ok"
        lines.append(
            f"| `{o.model_type}` | verified | {o.meaning.replace('resid_pre + ', '')} | "
            + ("; ".join(partial + ([moe] if moe else [])) or "none").replace("|", "/")
            + f" | {spec} |"
        )
    for verdict in ("wrong", "timed out", "refused", "does not build"):
        rows = [o for o in outcomes if o.verdict == verdict]
        if rows:
            lines += ["", f"{verdict.capitalize()}:", ""]
            lines += [f"- `{o.model_type}`: {o.why[:300]}".replace("|", "/") for o in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    tokenizer = train_tokenizer(TEXTS * 4, vocab_size=300)
    start = time.perf_counter()
    outcomes = []
    types: list[str] = args.only or list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    for model_type in types:
        outcome = one(model_type, tokenizer)
        outcomes.append(outcome)
        print(
            f"{model_type:28s} {outcome.verdict:15s} {outcome.seconds:5.1f}s {outcome.why[:110]}",
            flush=True,
        )
    seconds = time.perf_counter() - start
    text = markdown(outcomes, seconds)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


if __name__ == "__main__":
    main()
