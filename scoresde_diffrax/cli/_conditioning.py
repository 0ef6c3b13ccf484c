"""The old name of `_controllable.py` (renamed: the library's `_conditioning.py` is
per-example conditioning). Kept only for `bench.py`'s import of `TEST_SPLITS`; remove
it once that import reads `from ._controllable import TEST_SPLITS`."""

from ._controllable import TEST_SPLITS as TEST_SPLITS
