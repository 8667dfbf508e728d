"""``analoglab activations extract|info|ls``: JSON with stable keys, one-line errors, exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from analoglab.cli import app
from analoglab.config import Settings

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_error_line(code: int, err: str, expected: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err


def test_extract_info_ls(use_tiny_home: Settings, tmp_path: Path) -> None:
    store = tmp_path / "stores" / "sent"
    args = [
        "activations",
        "extract",
        "tiny-analog-s",
        "--task-set",
        "sentiment",
        "-n",
        "12",
        "--depths",
        "0,1",
        "--positions",
        "last",
        "--store",
        str(store),
        "--batch-size",
        "4",
    ]
    code, out, err = run(*args, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == 12 and summary["prompts"] == 12 and not summary["already_complete"]
    assert summary["hooks"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert summary["labels"] == ["negative", "positive"] and summary["tokens_per_s"] > 0
    assert "extract tiny-analog-s" in err  # the progress bar, on stderr

    code, out, _ = run(*args)  # the same command again: already complete
    assert code == 0 and "already complete" in out

    code, out, _ = run("activations", "info", str(store), "--json")
    info = json.loads(out)
    assert code == 0 and info["state"] == "complete" and info["rows"] == 12
    assert info["meta"]["identity"]["model"]["name"] == "tiny-analog-s"
    assert info["arrays"]["hooks/blocks.1.hook_resid_post"]["shape"] == [12, 24]
    assert set(info["arrays"]) >= {"token_ids", "prompt_index", "position", "labels"}
    code, out, _ = run("activations", "info", str(store))
    assert code == 0 and "tiny-analog-s" in out and "negative, positive" in out

    code, out, _ = run("activations", "ls", str(store.parent), "--json")
    listed = json.loads(out)
    assert code == 0 and [s["name"] for s in listed["stores"]] == ["sent"]
    assert listed["stores"][0]["bytes_on_disk"] > 0
    code, out, _ = run("activations", "ls", str(store.parent))
    assert code == 0 and "sent" in out and "complete" in out

    code, _, err = run(*[a if a != "0,1" else "0" for a in args])
    one_error_line(code, err, "made from other inputs")


def test_extract_from_a_prompts_file(use_tiny_home: Settings, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Tom went to the market\n\nAnna said that\n")
    code, out, err = run(
        "activations",
        "extract",
        "tiny-analog-s",
        "--prompts",
        str(prompts),
        "--hooks",
        "blocks.1.hook_resid_post",
        "--dtype",
        "float16",
        "--store",
        str(tmp_path / "f"),
    )
    assert code == 0, err
    assert "wrote" in out and "2 prompts" in out and "float16" in out


def test_errors_are_one_line(use_tiny_home: Settings, tmp_path: Path) -> None:
    base = ["activations", "extract", "tiny-analog-s", "--store", str(tmp_path / "s")]
    code, _, err = run(*base)
    one_error_line(code, err, "exactly one of --task-set NAME or --prompts FILE")
    code, _, err = run(*base, "--task-set", "sentiment", "--depths", "half")
    one_error_line(code, err, "--depths takes numbers")
    code, _, err = run(*base, "--task-set", "sentiment", "--positions", "first")
    one_error_line(code, err, "positions must be one of all, last, mean")
    code, _, err = run(*base, "--task-set", "nope")
    one_error_line(code, err, "unknown task set 'nope'")
    code, _, err = run(
        "activations",
        "extract",
        "no-such-model",
        "--task-set",
        "sentiment",
        "--store",
        str(tmp_path / "s"),
    )
    one_error_line(code, err, "no model 'no-such-model'")
    assert not (tmp_path / "s").exists()
    code, _, err = run("activations", "info", str(tmp_path / "missing"))
    one_error_line(code, err, "does not exist")


def test_ls_of_an_empty_home(home: Settings) -> None:
    code, out, _ = run("activations", "ls")
    assert code == 0 and "No activation stores" in out
    code, out, _ = run("activations", "ls", "--json")
    assert json.loads(out) == {"folder": str(home.home / "activations"), "stores": []}


def test_importing_the_package_loads_no_heavy_library() -> None:
    code = (
        "import sys, analoglab.activations, analoglab.cli;"
        "heavy = [m for m in ('torch', 'transformers', 'dask', 'zarr') if m in sys.modules];"
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
