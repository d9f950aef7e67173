"""Each client address's screens may take a share of the event loop for their own messages (ioc/live/budget.py)."""

from __future__ import annotations

import gc

from ioc.live.budget import Budgets, LoopBudget


def test_a_light_screen_is_never_held_back() -> None:
    budget = LoopBudget(share=0.1, burst_s=0.1)
    for _ in range(100):
        budget.charge(0.0005)  # 50 ms in all: within the burst
    assert budget.wait_s() == 0.0


def test_an_address_over_its_burst_waits_for_its_debt_to_drain() -> None:
    budget = LoopBudget(share=0.1, burst_s=0.1)
    budget.charge(0.5)  # 0.4 s over the burst at 0.1 s a second: 4 s
    assert 3.9 < budget.wait_s() <= 4.0


async def test_a_pause_over_budget_is_counted() -> None:
    budgets = Budgets(share=0.5, burst_s=0.0)
    budget = budgets.get("10.0.0.1")
    budget.charge(0.02)
    await budget.pause()
    assert budgets.held == 1 and 0.0 < budgets.held_s <= 0.04


def test_screens_of_one_address_share_a_budget_that_goes_with_the_last() -> None:
    budgets = Budgets()
    first = budgets.get("10.0.0.1")
    assert budgets.get("10.0.0.1") is first and budgets.get("10.0.0.2") is not first
    first.charge(1.0)
    del first
    gc.collect()
    assert budgets.get("10.0.0.1").debt == 0.0
