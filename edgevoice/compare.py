"""Cross-backend comparison of outputs (Polygraphy's comparator idea), used by tests and --verify.

Tensors are compared by max absolute error against a per-output tolerance; outputs named as
audio also get a signal-to-noise ratio, since a waveform can differ sample by sample and still
sound the same, so an audio output may pass on a minimum SNR instead of its sample error.
Streaming whole runners against each other (state fed back) is ``edgevoice.backends.compare``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """When one output counts as equal to its reference."""

    atol: float = 1e-4  # allowed max abs error
    rtol: float = 0.0  # plus this fraction of max|reference| (low-precision graphs whose states grow large)
    min_snr_db: float | None = None  # audio: pass when the SNR reaches this, whatever the sample error

    def limit(self, reference: np.ndarray) -> float:
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return self.atol + self.rtol * scale


# A per-output tolerance: a plain float is an absolute limit (atol, no rtol).
ToleranceLike = Union[float, Tolerance]


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs_error: float
    tolerance: float
    snr_db: float | None = None  # only for audio outputs
    min_snr_db: float | None = None  # set when the output may pass on its SNR

    @property
    def ok(self) -> bool:
        if self.min_snr_db is not None and self.snr_db is not None and self.snr_db >= self.min_snr_db:
            return True
        return bool(self.max_abs_error <= self.tolerance)

    def to_dict(self) -> dict:
        return {"name": self.name, "max_abs_error": self.max_abs_error, "tolerance": self.tolerance,
                "snr_db": self.snr_db, "min_snr_db": self.min_snr_db, "ok": self.ok}


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

    def to_dict(self) -> dict:
        return {"ok": self.ok, "outputs": [o.to_dict() for o in self.outputs]}


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
    per_output: Mapping[str, ToleranceLike] | None = None,
    audio_outputs: tuple[str, ...] = (),
    min_snr_db: float | None = None,
) -> Comparison:
    """Compare ``test`` against ``reference`` output by output (names must match).

    An output passes when its max abs error is at most its tolerance: ``per_output[name]`` if
    given (a float is an absolute limit, a ``Tolerance`` may add rtol and a minimum SNR), else
    ``atol + rtol * max|reference|``. Outputs in ``audio_outputs`` get an SNR, and with
    ``min_snr_db`` they also pass when their SNR reaches it.
    """
    if set(reference) != set(test):
        raise ValueError(f"outputs differ: reference has {sorted(reference)}, test has {sorted(test)}")
    default = Tolerance(atol, rtol, min_snr_db)
    per_output = per_output or {}
    results = []
    for name in sorted(reference):
        ref, out = np.asarray(reference[name]), np.asarray(test[name])
        if ref.shape != out.shape:
            raise ValueError(f"output '{name}': shape {out.shape} vs reference {ref.shape}")
        err = float(np.max(np.abs(ref.astype(np.float64) - out))) if ref.size else 0.0
        tolerance = _as_tolerance(per_output.get(name, default))
        is_audio = name in audio_outputs
        snr = snr_db(ref, out) if is_audio else None
        results.append(OutputComparison(name, err, tolerance.limit(ref), snr, tolerance.min_snr_db if is_audio else None))
    return Comparison(tuple(results))


def _as_tolerance(value: ToleranceLike) -> Tolerance:
    return value if isinstance(value, Tolerance) else Tolerance(atol=float(value))


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
