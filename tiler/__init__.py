"""The tile grid, the tile store (the one contract between stages) and the mosaicker."""
