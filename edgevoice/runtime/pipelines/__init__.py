"""Run-time glue of each recipe: which engine feeds which, over engines only (no torch, no models/)."""
