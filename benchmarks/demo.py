"""Latency of the public demo as visitors see it: time to first token and whole-completion
time of Talk, and the time of a Look inside (logit lens + norms), under 1 and 8 concurrent
clients, each a ``gradio_client`` against a really launched demo.

    python benchmarks/demo.py [--home DATA_FOLDER] [--analog NAME] [--requests 16]
        [--clients 1 8] [--tokens 24] [--json OUT]

The data folder must hold the analogs (``analoglab foundry build --preset demo``; default:
the settings in effect). Each client sends ``--requests`` completions one after the other,
with prompts and seeds varying, then as many Look-inside requests. Reported per concurrency:
p50/p95 of time to first token (first streamed chunk), of the whole completion, and of a
Look inside. Goal (issue 14, docs/performance.md): completion p95 < 2 s with 8 clients on
2 CPU cores with the demo analogs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from analoglab.config import Settings, get_settings
from analoglab.demos import build_app, serve

PROMPTS = [
    "the cake was",
    "the hotel was dirty and",
    "roll call : anna bob carl . again :",
    "when anna and bob went to the park , bob gave the ball to",
    "berlin is a city in",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def one_client(url: str, analog: str, n: int, tokens: int, offset: int) -> dict[str, list[float]]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    out: dict[str, list[float]] = {"ttft": [], "completion": [], "look": []}
    for i in range(n):
        prompt = PROMPTS[(offset + i) % len(PROMPTS)]
        start = time.perf_counter()
        job = client.submit(
            analog, prompt, tokens, 0.8, 0.95, 40, offset * 1000 + i, api_name="/talk"
        )
        first: float | None = None
        for _chunk in job:
            if first is None:
                first = time.perf_counter() - start
        out["completion"].append(time.perf_counter() - start)
        out["ttft"].append(first if first is not None else out["completion"][-1])
    for i in range(n):
        prompt = PROMPTS[(offset + i) % len(PROMPTS)]
        start = time.perf_counter()
        client.predict(analog, prompt, api_name="/look")
        out["look"].append(time.perf_counter() - start)
    return out


def measure(url: str, analog: str, clients: int, n: int, tokens: int) -> dict[str, Any]:
    results: list[dict[str, list[float]]] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        r = one_client(url, analog, n, tokens, k)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    merged = {k: [v for r in results for v in r[k]] for k in ("ttft", "completion", "look")}
    row: dict[str, Any] = {
        "clients": clients,
        "requests": len(merged["completion"]),
        "wall_s": round(wall, 2),
    }
    for name, values in merged.items():
        row[f"{name}_p50_s"] = round(statistics.median(values), 3)
        row[f"{name}_p95_s"] = round(percentile(values, 95), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--analog", default=None)
    parser.add_argument("--requests", type=int, default=16, help="completions per client")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--port", type=int, default=7990)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    settings = Settings(home=args.home) if args.home else get_settings()
    app = build_app(settings)
    analog = args.analog or app.analogs.names[0]
    serve(app, port=args.port, block=False)
    url = f"http://127.0.0.1:{args.port}/"
    one_client(url, analog, 1, args.tokens, 99)  # warm-up: first forward passes, caches
    rows = [measure(url, analog, c, args.requests, args.tokens) for c in args.clients]
    app.close()
    report = {
        "analog": analog,
        "tokens": args.tokens,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "rows": rows,
    }
    print(
        f"analog {analog}, {args.tokens} new tokens, {os.cpu_count()} CPUs, "
        f"load {report['load_average']:.1f}"
    )
    print("clients  requests  TTFT p50/p95 (s)  completion p50/p95 (s)  look inside p50/p95 (s)")
    for r in rows:
        print(
            f"{r['clients']:>7}  {r['requests']:>8}  "
            f"{r['ttft_p50_s']:>6.3f} / {r['ttft_p95_s']:<6.3f}"
            f"    {r['completion_p50_s']:>6.3f} / {r['completion_p95_s']:<6.3f}"
            f"          {r['look_p50_s']:>6.3f} / {r['look_p95_s']:<6.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
