"""KubeSpawner profiles restricted to groups, enforced at spawn.

A profile in ``singleuser.profileList`` may carry ``analoglab_groups: [group, ...]``: only
members of one of those groups see it in the spawn form **and** can start it. A profile
without the key (or with an empty list) is everyone's.

:func:`restrict_profiles` turns the configured list into the callable KubeSpawner accepts as
``profile_list``. KubeSpawner calls it both to render the form and in ``load_user_options``,
where it looks the requested slug up in what the callable returned: a profile the user may not
have is then "No such profile" and the spawn fails, whether it was asked for through the form
or straight through the REST API (``POST /users/<name>/server`` with ``{"profile": ...}``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: The key of a profile naming the groups allowed to use it.
GROUPS_KEY = "analoglab_groups"

Profile = dict[str, Any]


def allowed_groups(profile: Mapping[str, Any]) -> frozenset[str]:
    """The groups a profile is restricted to; empty: everyone may use it."""
    groups = profile.get(GROUPS_KEY) or ()
    if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
        raise ValueError(
            f"profile {profile.get('slug') or profile.get('display_name')!r}: "
            f"{GROUPS_KEY} must be a list of group names"
        )
    return frozenset(groups)


def visible_profiles(profiles: Sequence[Mapping[str, Any]], groups: Iterable[str]) -> list[Profile]:
    """The profiles a member of ``groups`` may see and start, as copies without
    :data:`GROUPS_KEY` (KubeSpawner never sees it). If the default profile is filtered out,
    KubeSpawner makes the first remaining one the default."""
    member = set(groups)
    result = []
    for profile in profiles:
        needed = allowed_groups(profile)
        if needed and not needed & member:
            continue
        visible = copy.deepcopy(dict(profile))
        visible.pop(GROUPS_KEY, None)
        result.append(visible)
    return result


def group_names(spawner: Any) -> list[str]:
    """The names of the groups of a spawner's user (JupyterHub's ``User.groups``)."""
    return [g.name for g in getattr(spawner.user, "groups", None) or ()]


def restrict_profiles(
    profiles: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
) -> Callable[[Any], list[Profile]]:
    """``KubeSpawner.profile_list`` as a callable that shows each user only their profiles.

    ``profiles`` is the configured list (or the chart's dict form, keyed by anything, sorted
    by key as KubeSpawner sorts it). Its restrictions are checked here, once, so a malformed
    ``analoglab_groups`` stops the hub at start-up rather than a user at spawn."""
    if isinstance(profiles, Mapping):
        listed = [profiles[k] for k in sorted(profiles)]
    else:
        listed = list(profiles)
    for profile in listed:
        allowed_groups(profile)
    frozen = copy.deepcopy(listed)

    def profile_list(spawner: Any) -> list[Profile]:
        return visible_profiles(frozen, group_names(spawner))

    return profile_list
