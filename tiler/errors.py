"""Exception types shared by every stage.

Every error the project raises on bad input derives from :class:`DeclouderError`, names the tile,
item, variable or option at fault, and says what to do about it. The CLI turns these into one clear
line and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class DeclouderError(Exception):
    """Base class of every error declouder raises on bad input or configuration."""


class TileStoreError(DeclouderError):
    """A tile store cannot be read or written as asked."""


class TileSchemaError(TileStoreError):
    """A tile store (or an in-memory tile) breaks the tile schema of DESIGN.md."""


class TileIncompleteError(TileStoreError):
    """A tile store whose writer never finished: it must not be used as if it were complete."""


class OutputExistsError(TileStoreError):
    """An output path already holds data and neither overwrite nor resume was asked for."""


class AreaError(DeclouderError):
    """An area of interest cannot be read or cannot be covered by the UTM tile grid."""


class MosaicError(DeclouderError):
    """Fitted tiles cannot be mosaicked as asked."""


class TileMismatchError(MosaicError):
    """A fitted tile does not belong in a mosaic: another UTM zone, band list, grid or date axis."""


class MosaicIncompleteError(MosaicError):
    """A mosaic store whose template or regions are not all written."""
