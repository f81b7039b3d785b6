"""Cutting text to a length: consecutive pieces packed greedily into chunks of at most N characters.

Used where text must fit a fixed budget: a voice's longest phrase (``cascade/tts.py``) and a
knowledge passage (``knowledge.py``). Each caller decides what a piece is (a clause, a sentence, a
word) and what to do with a piece that is too long on its own.
"""

from __future__ import annotations

from collections.abc import Iterable


def pack(pieces: Iterable[str], max_chars: int) -> list[str]:
    """Join consecutive ``pieces`` with single spaces while a chunk stays within ``max_chars``.

    A piece longer than ``max_chars`` becomes a chunk of its own, uncut; empty chunks are dropped.
    """
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > max_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}".strip()
    return chunks + ([current] if current else [])
