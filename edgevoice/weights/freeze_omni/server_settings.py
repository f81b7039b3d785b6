"""Freeze-Omni's ``checkpoints/server.json``: the speech decoder settings its live server runs with.

``bin/server.py`` reads this file and, for every segment it voices, passes its values to
``llm2TTS.run``: the reply's first segment decodes in smaller codec windows with a looser quiet
threshold (the first sound comes sooner), later ones in the offline window size; the first
packet's leading near-silence is cut at |x| > 0.03 (a constant in ``bin/server.py``, not in the
file). The offline demo (``bin/inference.py``) ignores the file and uses ``llm2TTS.run``'s defaults.

The file is optional: without it a package records no live plan and speaks as the offline demo.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgevoice.errors import EdgevoiceError

SERVER_FILE = "server.json"
FIRST_PACKET_TRIM_LEVEL = 0.03  # bin/server.py decoder(): the first packet starts at the first |x| above this


@dataclass(frozen=True)
class ServerSettings:
    """The keys of ``server.json``; defaults are the published file's values (used for missing keys)."""

    decoder_first_chunk_size: int = 20  # codec tokens per window, the reply's first segment
    decoder_chunk_size: int = 40  # codec tokens per window, later segments
    decoder_chunk_overlap_size: int = 10  # context / look-ahead tokens around each window
    decoder_top_k: int = 2  # speech tokens are sampled from this many
    decoder_penalty_window_size: int = -1  # repetition penalty window (<= 0: off)
    decoder_penalty: float = 1.1
    decoder_N: int = 2401  # samples of the quiet-point search window
    decoder_seg_threshold_first_pack: float = 0.1  # quiet threshold, the reply's first segment
    decoder_seg_threshold: float = 0.015  # quiet threshold, later segments

    def codec_fifo(self, hop: int, first: bool) -> dict[str, Any]:
        """A codec FIFO as the runtime's ``CodecStreamConfig`` fields, for the first or a later segment."""
        return {"hop": hop, "chunk": self.decoder_first_chunk_size if first else self.decoder_chunk_size,
                "padding": self.decoder_chunk_overlap_size, "first_chunk": None, "quiet_window": self.decoder_N,
                "quiet_threshold": self.decoder_seg_threshold_first_pack if first else self.decoder_seg_threshold}

    def live_plan(self, hop: int) -> dict[str, Any]:
        """The manifest's ``codec.live`` section (read by ``runtime.freeze_omni.speech_tokens.LivePlan``)."""
        return {"first_fifo": self.codec_fifo(hop, first=True), "fifo": self.codec_fifo(hop, first=False),
                "trim_level": FIRST_PACKET_TRIM_LEVEL}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_server_settings(checkpoints_dir: str | Path) -> ServerSettings | None:
    """``checkpoints/server.json`` when present (None otherwise); unknown keys are ignored, as the server does."""
    path = Path(checkpoints_dir) / SERVER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgevoiceError(f"{path} is not valid JSON ({exc.msg}); restore the published server.json or delete it") from exc
    if not isinstance(data, dict):
        raise EdgevoiceError(f"{path} does not hold a JSON object; restore the published server.json or delete it")
    values = {}
    for field in fields(ServerSettings):
        if field.name in data:
            values[field.name] = _number(data[field.name], field.type, f"{path}: {field.name}")
    settings = ServerSettings(**values)
    if min(settings.decoder_first_chunk_size, settings.decoder_chunk_size, settings.decoder_chunk_overlap_size,
           settings.decoder_top_k, settings.decoder_N) < 1:
        raise EdgevoiceError(f"{path}: chunk sizes, overlap, top_k and N must be at least 1; restore the published values")
    return settings


def _number(value: Any, kind: str, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgevoiceError(f"{what} is {value!r}, not a number; restore the published server.json")
    if kind == "int":
        if value != int(value):
            raise EdgevoiceError(f"{what} is {value}, expected a whole number; restore the published server.json")
        return int(value)
    return float(value)
