"""VocalNet's ``speech_generator.*`` tensors into ``MtpSpeechDecoder``, strictly.

The checkpoint reader (``edgevoice.weights.vocalnet.checkpoint``) hands over the generator's
tensors with the ``speech_generator.`` prefix stripped and its sizes as a ``SpeechGeneratorConfig``.
The module's parameter names are the reference's own (``embedding``, ``encode_layers.{i}.*``,
``decode_layers.{i}.*``, ``norm``, ``output_proj``, ``mtp_layers.{j}.{decoder_layer,norm_final,
output_proj}.*``), so the mapping is one to one: every tensor placed exactly once, all of the
``mtp_num`` MTP layers included even when fewer run per step. Rotary frequencies are derived
from the config, never read: a stored ``inv_freq`` (older savers kept it) is checked against the
derived one and then dropped, not placed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.speech_decoder import MtpDecoderConfig, MtpSpeechDecoder
from edgevoice.weights.strict import load_state_strict
from edgevoice.weights.vocalnet.checkpoint import (
    SpeechGeneratorConfig,
    load_vocalnet_checkpoint,
)

_INV_FREQ = "rotary_emb.inv_freq"  # HF rotary buffers (one per stack in the reference)


def decoder_config(
    generator: SpeechGeneratorConfig, mtp_used: int = 2, max_text_rows: int = 520, max_speech_rows: int = 2048
) -> MtpDecoderConfig:
    """The decoder shape from config.json's generator fields plus the graphs' limits.

    ``mtp_used`` is the reference's ``infer_mtp_token_num`` (2 in vocalnet.py and vocalnet_streaming.py):
    the step returns 1 + mtp_used logits rows.
    """
    if not 0 <= mtp_used <= generator.mtp_num:
        raise EdgevoiceError(
            f"mtp_used={mtp_used} but the checkpoint has {generator.mtp_num} MTP layers; pass 0..{generator.mtp_num}"
        )
    try:
        return MtpDecoderConfig(
            width=generator.width, heads=generator.heads, ffn=generator.ffn,
            pre_nn_layers=generator.pre_nn_layers, decoder_layers=generator.decoder_layers,
            mtp_layers=generator.mtp_num, mtp_used=mtp_used, unit_vocab=generator.unit_vocab_size,
            special_tokens=generator.vocab - generator.unit_vocab_size, bos_id=generator.bos_id,
            sos_id=generator.sos_id, eos_id=generator.eos_id, pad_id=generator.pad_id,
            rope_base=generator.rope_theta, rms_eps=generator.rms_eps,
            max_text_rows=max_text_rows, max_speech_rows=max_speech_rows,
        )
    except ValueError as exc:
        raise EdgevoiceError(f"the speech generator in config.json cannot be built: {exc}") from exc


def _without_rotary(tensors: Mapping[str, torch.Tensor], decoder: MtpSpeechDecoder, source: str) -> dict[str, torch.Tensor]:
    """The tensors minus stored rotary frequencies, each checked against the derived ones."""
    kept = {}
    for name, tensor in tensors.items():
        if not name.endswith(_INV_FREQ):
            kept[name] = tensor
            continue
        derived = decoder.rotary.inv_freq
        if tensor.shape != derived.shape or not torch.allclose(tensor.float(), derived, rtol=1e-5, atol=0):
            raise EdgevoiceError(
                f"{source}: '{name}' does not match rope base {decoder.config.rope_base}; the decoder was trained "
                "with another rotary setting edgevoice does not implement"
            )
    return kept


def load_speech_decoder(
    tensors: Mapping[str, torch.Tensor], generator: SpeechGeneratorConfig, source: str, **limits: int
) -> MtpSpeechDecoder:
    """An eval-mode decoder holding ``tensors`` (prefix stripped, any float dtype, stored as float32)."""
    decoder = MtpSpeechDecoder(decoder_config(generator, **limits))
    not_float = sorted(name for name, t in tensors.items() if not t.is_floating_point())
    if not_float:
        raise EdgevoiceError(f"{source}: speech generator tensors {not_float[:3]} are not floating point; is it the right file?")
    state = {name: t.float().contiguous() for name, t in _without_rotary(tensors, decoder, source).items()}
    load_state_strict(decoder, state, source=f"{source} (speech_generator.*)")
    return decoder.eval()


def load_speech_decoder_from_folder(vocalnet_dir: str | Path, whisper_dir: str | Path | None = None, **limits: int) -> MtpSpeechDecoder:
    """The decoder of a published VocalNet folder (read whole and checked by the checkpoint reader)."""
    checkpoint = load_vocalnet_checkpoint(vocalnet_dir, whisper_dir)
    return load_speech_decoder(checkpoint.speech_generator, checkpoint.config.generator, str(vocalnet_dir), **limits)
