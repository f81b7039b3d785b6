"""Components, one per file; each has forward() and an exportable step(x, *state)."""
