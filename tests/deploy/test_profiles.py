"""Profiles restricted to groups (analoglab.deploy.profiles), checked against KubeSpawner's
own profile handling: what the form shows, and what a spawn may load — through the form or
straight through the REST API — for members and non-members of a profile's groups."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from analoglab.deploy.profiles import GROUPS_KEY, restrict_profiles, visible_profiles

from .charts import HELM, load_yaml

kubespawner = pytest.importorskip("kubespawner")


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner loads the cluster's credentials when it is made (it contacts nothing until
    it spawns): there is no cluster here, so it loads none."""
    monkeypatch.setattr(kubespawner.spawner, "load_config", lambda **_: None)


def profiles() -> list[dict[str, Any]]:
    return load_yaml(HELM / "values" / "jupyterhub.yaml")["singleuser"]["profileList"]


def spawner(groups: list[str], user_options: dict[str, Any] | None = None) -> Any:
    user = SimpleNamespace(
        name="ada",
        id=1,
        url="/user/ada/",
        groups=[SimpleNamespace(name=g) for g in groups],
        escaped_name="ada",
    )
    s = kubespawner.KubeSpawner(_mock=True, user=user)
    s.profile_list = restrict_profiles(profiles())
    s.user_options = user_options or {}
    return s


def slugs(items: list[dict[str, Any]]) -> list[str]:
    return [p["slug"] for p in items]


def test_visible_profiles_filter_by_group_and_hide_the_key() -> None:
    ps = profiles()
    assert slugs(visible_profiles(ps, [])) == ["cpu"]
    assert slugs(visible_profiles(ps, ["gpu"])) == ["cpu", "gpu-small"]
    assert slugs(visible_profiles(ps, ["gpu-large"])) == ["cpu", "gpu-large"]
    assert slugs(visible_profiles(ps, ["admins"])) == ["cpu", "gpu-small", "gpu-large"]
    assert all(GROUPS_KEY not in p for p in visible_profiles(ps, ["admins"]))
    assert GROUPS_KEY in ps[1]  # the configured list is untouched


def test_a_malformed_restriction_stops_the_hub_at_start() -> None:
    with pytest.raises(ValueError, match="list of group names"):
        restrict_profiles([{"display_name": "x", GROUPS_KEY: "gpu"}])


async def test_the_form_shows_only_the_users_profiles() -> None:
    s = spawner(["researchers"])
    form = await s._render_options_form_dynamically(s)
    assert "CPU" in form and "GPU (small)" not in form and "GPU (large)" not in form
    s = spawner(["gpu"])
    form = await s._render_options_form_dynamically(s)
    assert "GPU (small)" in form and "GPU (large)" not in form


async def test_a_member_starts_a_gpu_profile_and_gets_its_gpus() -> None:
    s = spawner(["gpu"], {"profile": "gpu-small"})
    await s.load_user_options()
    assert s.extra_resource_limits == {"nvidia.com/gpu": "1"}
    assert s.node_selector == {"analoglab.io/pool": "gpu-small"}
    assert s.tolerations[0]["key"] == "nvidia.com/gpu"
    assert s.image.endswith("-cuda")


@pytest.mark.parametrize("groups", [[], ["researchers"], ["gpu"]])
async def test_a_non_member_cannot_start_a_restricted_profile_even_through_the_api(
    groups: list[str],
) -> None:
    s = spawner(groups, {"profile": "gpu-large"})
    with pytest.raises(ValueError, match="No such profile: gpu-large"):
        await s.load_user_options()
    assert not s.extra_resource_limits


async def test_no_choice_gets_the_default_cpu_profile() -> None:
    s = spawner(["gpu", "gpu-large"])
    await s.load_user_options()
    assert not s.extra_resource_limits
    assert s.image == kubespawner.KubeSpawner(_mock=True).image
