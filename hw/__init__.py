"""Target hardware profiles: JSON data only, read by edgevoice.targets (no code lives here)."""
