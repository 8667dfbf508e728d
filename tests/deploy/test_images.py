"""The rules every Dockerfile under images/ keeps (hadolint is no registry package: the rules
that matter, checked here): multi-stage, pinned bases (a version tag or a digest, never
latest), a non-root USER in every final stage, no secret in ENV or ARG, pip without its
cache, a .dockerignore per Dockerfile, and only files that exist copied from the context."""

from __future__ import annotations

import re
import shlex
import subprocess
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


def make_images(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "images", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_images_builds_every_dockerfile_with_the_tags_the_charts_pull() -> None:
    """``make images`` (dry run: no container builder runs here) builds each Dockerfile, each
    services target, with the repository and tag the charts and the hub values name."""
    done = make_images("-n", "CONTAINER_BUILDER=docker")
    assert done.returncode == 0, done.stderr
    builds = [shlex.split(line) for line in done.stdout.splitlines() if " build " in line]
    built = {
        (b[b.index("-f") + 1], b[b.index("--target") + 1] if "--target" in b else None)
        for b in builds
    }
    for path in DOCKERFILES:
        rel = str(path.relative_to(ROOT))
        targets = {t for f, t in built if f == rel}
        assert targets, f"make images does not build {rel}"
        if rel == "images/services/Dockerfile":
            assert targets == {"queue", "mlflow", "demo"}, targets
    tags = {b[b.index("-t") + 1] for b in builds}
    hub = load_yaml(HELM / "analoglab-hub" / "values.yaml")
    lab = load_yaml(HELM / "analoglab-lab" / "values.yaml")
    jh = load_yaml(HELM / "values" / "jupyterhub.yaml")
    pulled = {
        f"{hub[c]['image']['repository']}:{hub[c]['image']['tag']}"
        for c in ("queue", "mlflow", "demo", "modelStore")
    }
    pulled |= {
        f"{lab[c]['image']['repository']}:{lab[c]['image']['tag']}" for c in ("agent", "executor")
    }
    pulled |= {f"{jh[c]['image']['name']}:{jh[c]['image']['tag']}" for c in ("hub", "singleuser")}
    assert pulled <= tags, pulled - tags


def test_make_images_without_a_builder_says_so() -> None:
    done = make_images("CONTAINER_BUILDER=")
    assert done.returncode != 0
    assert "no container builder" in done.stderr and "Traceback" not in done.stderr


def test_the_hub_image_is_built_on_the_chart_version_the_helmfile_pins() -> None:
    """The official hub image's tag is the jupyterhub chart's version: our hub image must be
    built on the one the helmfile installs (4.4.0 ships JupyterHub 5.5.0, the schema in
    ../shared/schemas), and the upstream charts are pinned to exact versions."""
    helmfile = load_yaml(HELM / "helmfile.yaml")
    versions = {r["name"]: r.get("version") for r in helmfile["releases"]}
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions["jupyterhub"] or ""), versions
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", versions["dask-gateway"] or ""), versions
    hub = (IMAGES / "hub" / "Dockerfile").read_text()
    assert f"quay.io/jupyterhub/k8s-hub:{versions['jupyterhub']}" in hub
