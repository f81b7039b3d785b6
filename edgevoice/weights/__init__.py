"""Loaders from upstream weight formats into edgevoice's torch components (strict accounting)."""
