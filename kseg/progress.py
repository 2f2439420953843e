"""The one progress-callback type every stage takes: ``callback(done, total)``."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
