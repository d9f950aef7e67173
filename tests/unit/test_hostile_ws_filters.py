"""A screen's filter is bounded: at most MAX_NAMES names of at most MAX_NAME_CHARS characters in each list."""

from __future__ import annotations

import pytest

from ioc.live.filters import MAX_NAME_CHARS, MAX_NAMES, FilterError, Subscription


@pytest.mark.parametrize("key", ["devices", "districts", "kinds", "types"])
def test_a_list_of_too_many_names_is_refused(key: str) -> None:
    with pytest.raises(FilterError, match="at most"):
        Subscription.parse({key: [f"d{i}" for i in range(MAX_NAMES + 1)]})
    with pytest.raises(FilterError, match="at most"):
        Subscription.parse({key: ",".join(f"d{i}" for i in range(MAX_NAMES + 1))})


def test_a_name_too_long_is_refused() -> None:
    with pytest.raises(FilterError, match="at most"):
        Subscription.parse({"devices": ["x" * (MAX_NAME_CHARS + 1)]})


def test_a_wall_of_many_devices_is_still_served() -> None:
    sub = Subscription.parse({"devices": [f"HP-CAM-{i:05d}" for i in range(MAX_NAMES)], "districts": "LC,NQ"})
    assert len(sub.devices) == MAX_NAMES and sub.districts == {"LC", "NQ"}
