"""Fixtures shared by the tests of ``core``."""

from tests.core.disk import small_disk

__all__ = ["small_disk"]
