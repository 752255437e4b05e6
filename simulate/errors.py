"""Re-export of :class:`specdenoise.errors.SpecdenoiseError` (its home before the contracts layer).

Kept so that ``from specdenoise.simulate.errors import SpecdenoiseError`` goes on working; new
code imports it from :mod:`specdenoise.errors`.
"""

from specdenoise.errors import SpecdenoiseError

__all__ = ["SpecdenoiseError"]
