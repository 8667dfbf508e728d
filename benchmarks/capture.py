"""Tokens/s of capturing the residual stream at every block, against the bare forward pass
(the limit) and against nnsight capturing the same tensors (the peer library).

    python benchmarks/capture.py [--device cpu|cuda] [--shape demo|large] [--batch 16]
        [--seq 128] [--iters 20] [--json OUT] [--docs docs/performance.md --block NAME]

Each contender runs the same model on the same batches; the order rotates every round so
that neither gains from a warm cache or loses to a slow moment, and the median round counts.
Goal (docs/performance.md): capture ≥ 0.95× the bare forward, and no slower than nnsight.
``--docs PAGE --block NAME`` writes the table, stamped with the commit, date and machine,
between ``<!-- capture:NAME:start -->`` and ``<!-- capture:NAME:end -->`` of PAGE. On a GPU
machine without the package installed, the script needs the package's modules on
``PYTHONPATH`` and what ``import analoglab`` needs (pydantic, pydantic-settings,
python-dotenv, platformdirs, cryptography, bcrypt; nnsight for the peer).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analoglab.interventions import capture, layout_of
from benchdocs import add_docs_options, check_docs_options, stamp, write_block

SHAPES = {
    # The demo frontier's shape, and a wider, deeper one where a forward costs more.
    "demo": dict(
        hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6
    ),
    "large": dict(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8
    ),
}


def build(shape: str, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    s = SHAPES[shape]
    cfg = LlamaConfig(
        vocab_size=1024,
        num_key_value_heads=s["num_attention_heads"],
        max_position_embeddings=512,
        **s,
    )
    return LlamaForCausalLM(cfg).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    add_docs_options(parser)
    args = parser.parse_args()
    check_docs_options(parser, args, "capture")

    device = torch.device(args.device)
    model = build(args.shape, device)
    layout = layout_of(model)
    names = [layout.hook_name("hook_resid_post", block=i) for i in range(layout.n_layers)]
    x = torch.randint(0, 1024, (args.batch, args.seq), device=device)
    tokens = x.numel()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> None:
        model(input_ids=x)

    def ours() -> None:
        with capture(model, names) as cache:
            model(input_ids=x)
        assert len(cache) == len(names)

    contenders: dict[str, Callable[[], None]] = {"bare forward": bare, "analoglab capture": ours}
    try:
        from nnsight import NNsight

        wrapped = NNsight(model)

        def peer() -> None:
            saved = []
            with wrapped.trace(x):
                for i in range(layout.n_layers):
                    saved.append(wrapped.model.layers[i].output.save())
            assert len(saved) == layout.n_layers

        contenders["nnsight capture"] = peer
    except ImportError:
        print("nnsight is not installed: comparing with the bare forward only")

    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.no_grad():
        for fn in contenders.values():  # warm-up
            fn()
            fn()
        order = list(contenders)
        for r in range(args.iters):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                sync()
                t0 = time.perf_counter()
                contenders[name]()
                sync()
                times[name].append(time.perf_counter() - t0)
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    base = rate["bare forward"]
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
    )
    print(
        f"\n{machine}; shape {args.shape} ({layout.n_layers} blocks, d={layout.d_model}), "
        f"batch {args.batch}×{args.seq}, median of {args.iters} rounds\n"
    )
    table = ["| contender | tokens/s | × bare forward |", "|---|---:|---:|"]
    table += [f"| {k} | {v:,.0f} | {v / base:.3f} |" for k, v in rate.items()]
    print("\n".join(table))
    if args.docs:
        st = stamp(torch.get_num_threads(), device.type)
        head = (
            f"Shape {args.shape} ({layout.n_layers} blocks, d={layout.d_model}), batch "
            f"{args.batch} × {args.seq} tokens, on {device.type}, the median of {args.iters} "
            f"rounds (the order rotated each round). Measured at commit `{st['commit']}` on "
            f"{st['date']}, {st['machine']}, {st['threads']} torch thread(s), torch "
            f"{st['torch']} (`benchmarks/capture.py`)."
        )
        write_block(args.docs, "capture", args.block, head + "\n\n" + "\n".join(table) + "\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "shape": args.shape,
                    "batch": args.batch,
                    "seq": args.seq,
                    "tokens_per_s": rate,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
