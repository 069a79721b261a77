"""Fit: per-tile internal-learning cloud removal (network, losses, schedule, metrics, evaluation).

The public names below load lazily, so importing ``fit.config`` (presets, for planning) does not pull
in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fit.config import PRESETS, FitConfig
    from fit.declouder import DecloudResult, ProgressEvent, decloud
    from fit.evaluate import Evaluation, evaluate
    from fit.tile import FitResult, fit_tile

_EXPORTS = {
    "PRESETS": "fit.config",
    "FitConfig": "fit.config",
    "DecloudResult": "fit.declouder",
    "ProgressEvent": "fit.declouder",
    "decloud": "fit.declouder",
    "Evaluation": "fit.evaluate",
    "evaluate": "fit.evaluate",
    "FitResult": "fit.tile",
    "fit_tile": "fit.tile",
}
__all__ = [
    "PRESETS",
    "DecloudResult",
    "Evaluation",
    "FitConfig",
    "FitResult",
    "ProgressEvent",
    "decloud",
    "evaluate",
    "fit_tile",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fit' has no attribute {name!r}")
