"""Errors of the fit stage. Each names the tile, option or file at fault and says what to do."""

from __future__ import annotations

from tiler.errors import DeclouderError


class FitError(DeclouderError):
    """Base of every error the fit stage raises on bad input or configuration."""


class FitConfigError(FitError):
    """A fit setting (preset, option, device) is invalid."""


class FitInputError(FitError):
    """The tile cannot be fitted as it is (e.g. ``--input s1`` on a tile without any radar)."""


class AllCloudyError(FitInputError):
    """No clear pixel is left in the tile: there is nothing to learn the surface from."""


class WeightsMissingError(FitError):
    """The VGG16 weights the perceptual loss needs are not on this machine."""


class WeightsInvalidError(FitError):
    """A VGG16 weights file exists but is not torchvision's ``vgg16`` state dict."""


class EvaluationError(FitError):
    """The evaluation protocol cannot run on this tile (e.g. no clear date to use as a target)."""


class WarmStartError(FitError):
    """A neighbour's weights file cannot start this fit (missing, unreadable, or another network)."""
