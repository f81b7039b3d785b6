"""Cross-backend comparison of outputs (Polygraphy's comparator idea), used by tests and --verify.

Tensors are compared by max absolute error against a per-output tolerance; outputs named as
audio also get a signal-to-noise ratio, since a waveform can differ sample by sample and still
sound the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import re

import numpy as np


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    tolerance: float
    snr_db: float | None = None  # only for audio outputs

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_error <= self.tolerance)


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputComparison, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def max_errors(self) -> dict[str, float]:
        return {o.name: o.max_abs_error for o in self.outputs}

    def summary(self) -> str:
        parts = [f"{o.name} {o.max_abs_error:.2e}{'' if o.ok else f' > {o.tolerance:.0e}'}" for o in self.outputs]
        return ("OK: " if self.ok else "FAILED: ") + ", ".join(parts)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10·log10(signal power / error power); inf when identical."""
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    atol: float = 1e-4,
    rtol: float = 0.0,
    per_output: Mapping[str, float] | None = None,
    audio_outputs: tuple[str, ...] = (),
) -> Comparison:
    """Compare ``test`` against ``reference`` output by output (names must match).

    An output passes when its max abs error is at most ``per_output[name]`` if given, else
    ``atol + rtol * max|reference|`` (rtol suits low-precision graphs whose states grow large).
    """
    if set(reference) != set(test):
        raise ValueError(f"outputs differ: reference has {sorted(reference)}, test has {sorted(test)}")
    per_output = per_output or {}
    results = []
    for name in sorted(reference):
        ref, out = np.asarray(reference[name]), np.asarray(test[name])
        if ref.shape != out.shape:
            raise ValueError(f"output '{name}': shape {out.shape} vs reference {ref.shape}")
        err = float(np.max(np.abs(ref.astype(np.float64) - out))) if ref.size else 0.0
        snr = snr_db(ref, out) if name in audio_outputs else None
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        results.append(OutputComparison(name, err, per_output.get(name, atol + rtol * scale), snr))
    return Comparison(tuple(results))


def words(text: str) -> list[str]:
    """Lower-case words of a transcript, punctuation dropped (digits kept: "25" is not "twenty five")."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance from ``reference`` to ``hypothesis``, words in ``reference``): the parts of a WER."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)
