"""glibc's allocator thresholds are raised at start unless told not to (service.memory)."""

import platform

import pytest

from service import memory
from service.settings import Settings


def test_zero_or_the_operators_own_variables_leave_glibcs_defaults(monkeypatch):
    assert memory.tune_malloc(0) is False
    for name in memory.OPERATOR_VARIABLES:
        monkeypatch.setenv(name, "131072")
        assert memory.tune_malloc(64) is False
        monkeypatch.delenv(name)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds(monkeypatch):
    for name in memory.OPERATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert memory.tune_malloc(Settings().malloc_retain_mb) is True


def test_the_setting_is_bounded():
    assert Settings().malloc_retain_mb == 64
    with pytest.raises(ValueError, match="malloc_retain_mb"):
        Settings(malloc_retain_mb=-1)
    with pytest.raises(ValueError, match="malloc_retain_mb"):
        Settings(malloc_retain_mb=4096)
