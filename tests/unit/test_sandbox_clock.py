"""The sandbox clock that tests freeze and move instead of sleeping."""

from __future__ import annotations

import time

import pytest

from airflow_provider_smart.sandbox.clock import SandboxClock


def test_real_time_until_frozen_then_only_advance_moves_it() -> None:
    clock = SandboxClock()
    assert abs(clock.time() - time.time()) < 1
    clock.freeze(at=1_000_000.0)
    time.sleep(0.01)
    assert clock.time() == 1_000_000.0 and clock.frozen
    clock.advance(2.5)
    assert clock.time() == 1_000_002.5
    assert clock.now().timestamp() == 1_000_002.5


def test_thaw_goes_on_from_the_frozen_moment_and_reset_returns_to_real_time() -> None:
    clock = SandboxClock()
    clock.freeze()
    clock.advance(3600)
    clock.thaw()
    assert not clock.frozen
    assert 3599 < clock.time() - time.time() < 3601
    clock.reset()
    assert abs(clock.time() - time.time()) < 1


def test_time_never_goes_back_and_bad_settings_are_named() -> None:
    clock = SandboxClock()
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match=r"unknown clock setting\(s\) \['rewind'\]"):
        clock.apply_json({"rewind": 5})
    clock.apply_json({"freeze": True, "advance": 10})
    assert clock.frozen and clock.time() - time.time() > 9
