"""The rules every Dockerfile under images/ keeps (hadolint is no registry package: the rules
that matter, checked here): multi-stage, pinned bases (a version tag or a digest, never
latest), a non-root USER in every final stage, no secret in ENV or ARG, pip without its
cache, a .dockerignore per Dockerfile, and only files that exist copied from the context."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .charts import HELM, ROOT, load_yaml

IMAGES = ROOT / "images"
DOCKERFILES = sorted(p for p in IMAGES.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))
SECRETISH = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|_KEY|CREDENTIAL)", re.I)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM (with defaults)
    stages: list[Stage]


def parse(path: Path) -> Dockerfile:
    """Instructions (continuations joined, comments dropped), grouped by stage."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert op == "ARG", f"{path}: {op} before the first FROM"
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append((op, rest.strip()))
    return Dockerfile(args, stages)


def expand(base: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)


def final_stages(df: Dockerfile) -> list[Stage]:
    """Stages no other stage builds on or copies from: what gets shipped."""
    used = {s.base for s in df.stages}
    for s in df.stages:
        for op, rest in s.instructions:
            if op == "COPY":
                used.update(re.findall(r"--from=(\S+)", rest))
    return [s for s in df.stages if s.name is None or s.name not in used]


def test_there_are_the_images_the_issue_asks_for() -> None:
    names = {str(p.relative_to(IMAGES)) for p in DOCKERFILES}
    assert {
        "notebook/Dockerfile",
        "notebook/Dockerfile.cuda",
        "services/Dockerfile",
        "lab-worker/Dockerfile",
        "hub/Dockerfile",
    } <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(IMAGES)))
def test_dockerfile_rules(path: Path) -> None:
    df = parse(path)
    assert len(df.stages) >= 2, "multi-stage: build apart from the final image"
    stage_names = {s.name for s in df.stages}
    for stage in df.stages:
        if stage.base in stage_names:
            continue
        base = expand(stage.base, df.args)
        assert "$" not in base, f"{stage.base}: an ARG without a default"
        ref = base.rsplit("/", 1)[-1]
        assert "@sha256:" in ref or (":" in ref and ref.split(":")[1] != "latest"), (
            f"unpinned base {base}"
        )
        assert re.search(r":[^:]*\d", ref), f"{base}: pin a version, not a moving name"
    finals = final_stages(df)
    assert finals
    for stage in finals:
        # the user the image runs as: the last USER of the stage or of the stages it builds on
        chain, s = [stage], stage
        while (parent := next((p for p in df.stages if p.name == s.base), None)) is not None:
            chain.append(parent)
            s = parent
        users = [rest for st in reversed(chain) for op, rest in st.instructions if op == "USER"]
        assert users, f"stage {stage.name}: no USER"
        user = users[-1].split(":")[0]
        assert user not in ("root", "0"), f"stage {stage.name} runs as root"
    for stage in df.stages:
        for op, rest in stage.instructions:
            if op in ("ENV", "ARG"):
                for key in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                    assert not SECRETISH.search(key), f"{op} {key}: no secrets in the image"
            if op == "RUN" and "pip install" in rest:
                for cmd in rest.split("&&"):
                    if "pip install" in cmd:
                        assert "--no-cache-dir" in cmd, f"pip keeps its cache: {cmd.strip()}"
            if op == "ADD":
                assert not re.search(r"https?://", rest), "ADD of a URL: download in a RUN"
            if op == "COPY" and "--from" not in rest:
                for src in shlex.split(rest)[:-1]:
                    if not src.startswith("--"):
                        assert (ROOT / src).exists(), f"COPY {src}: not in the context"
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: the context would carry the whole repository"


def test_the_services_image_keeps_torch_out_of_the_queue() -> None:
    df = parse(IMAGES / "services" / "Dockerfile")
    build_queue = next(s for s in df.stages if s.name == "build-queue")
    text = " ".join(rest for _, rest in build_queue.instructions)
    assert "torch" not in text and "[hub]" in text and "notebook" not in text


def test_the_charts_use_the_images_built_here() -> None:
    readme = (IMAGES / "README.md").read_text()
    hub = load_yaml(HELM / "analoglab-hub" / "values.yaml")
    lab = load_yaml(HELM / "analoglab-lab" / "values.yaml")
    jh = load_yaml(HELM / "values" / "jupyterhub.yaml")
    repos = {hub[c]["image"]["repository"] for c in ("queue", "mlflow", "demo", "modelStore")} | {
        lab["agent"]["image"]["repository"],
        lab["executor"]["image"]["repository"],
    }
    repos |= {jh["hub"]["image"]["name"], jh["singleuser"]["image"]["name"]}
    for repo in repos:
        assert f"`{repo.rsplit('/', 1)[-1]}`" in readme, repo
