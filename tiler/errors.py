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


class CorruptChunkError(TileStoreError):
    """A chunk of a tile store cannot be decoded: its bytes are damaged or truncated.

    The store is not usable as it is; the fix is to write the tile again from its sources. The
    attributes name where the damage is, so a campaign can send the tile back to ingest by itself.

    Attributes:
        store: URL or path of the tile store.
        variable: The data variable (or coordinate) whose chunk failed to decode.
        chunk: The chunk's indices along the variable's dimensions, e.g. ``(3, 0, 0, 0)``.
    """

    def __init__(self, store: str, variable: str, chunk: tuple[int, ...], reason: str = "") -> None:
        self.store = str(store)
        self.variable = str(variable)
        self.chunk = tuple(int(i) for i in chunk)
        self.reason = reason
        key = ".".join(str(i) for i in self.chunk)
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"tile store {self.store}: chunk {key} of variable {self.variable!r} is corrupt and "
            f"cannot be decoded{detail}; re-ingest the tile (declouder ingest --tile ... --overwrite, "
            "or rerun the campaign, which re-ingests it by itself)"
        )

    def __reduce__(self) -> tuple[type[CorruptChunkError], tuple[str, str, tuple[int, ...], str]]:
        # Picklable with its attributes, so it survives a trip through a Ray worker.
        return (CorruptChunkError, (self.store, self.variable, self.chunk, self.reason))
