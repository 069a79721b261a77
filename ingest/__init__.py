"""Ingest: STAC search -> S1/S2 pairing -> stackstac load on the tile grid -> masks -> tile store."""
