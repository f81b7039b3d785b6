"""VocalNet's published shapes on the meta device: the memory budget of the real models per hw/ target.

Nothing is allocated: the modules are built on ``torch.device("meta")`` from the published
configurations and measured by the exporter's budget code (``edgevoice.export.published``), graph by
graph, exactly as an export of the real folders would be.

* VocalNet-1B: LLaMA-3.2-1B-Instruct (2048 wide, 16 layers, 32/8 heads, FFN 8192, vocab 128256,
  tied), the speech decoder of ``ar_config_5`` at the LLM's width (32 heads, FFN 8192, pre-NN 2,
  decoder 4, 5 MTP layers of which 2 run), Whisper-large-v3's encoder (1280 wide, 32 layers) with
  the 5-frame projector (inner 2048), CosyVoice2-0.5B's flow and HiFT.
* VocalNet-8B: LLaMA-3.1-8B-Instruct (4096 wide, 32 layers, 32/8 heads, FFN 14336, untied); the
  speech decoder at width 4096 with the 1B's layer counts and FFN (an assumption: its
  ``config.json`` has not been read here); the same encoder and vocoder.
"""

from __future__ import annotations

import torch

from edgevoice.models.llm import Llama3RopeScaling, LlmConfig, LlmModel
from edgevoice.models.vocalnet.flow import FlowConfig, FlowModel
from edgevoice.models.vocalnet.hift import HiftConfig, HiftGenerator
from edgevoice.models.vocalnet.listen import VocalNetListen
from edgevoice.models.vocalnet.speech_decoder import MtpDecoderConfig, MtpSpeechDecoder
from edgevoice.models.whisper.model import WhisperConfig
from edgevoice.recipes.base import RecipeComponent

LLAMA3_SCALING = Llama3RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192)
WHISPER_LARGE_V3 = WhisperConfig(n_mels=128, n_audio_ctx=1500, width=1280, n_audio_heads=20, n_audio_layers=32,
                                 ffn=5120, n_vocab=51866, n_text_heads=20, n_text_layers=0)
LLMS = {
    "VocalNet-1B": LlmConfig(vocab_size=128256, hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, ffn=8192,
                             rope_base=500000.0, rope_scaling=LLAMA3_SCALING, tie_word_embeddings=True),
    "VocalNet-8B": LlmConfig(vocab_size=128256, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, ffn=14336,
                             rope_base=500000.0, rope_scaling=LLAMA3_SCALING, tie_word_embeddings=False),
}


def published_components(model: str = "VocalNet-1B", max_context: int = 1024) -> list[RecipeComponent]:
    """The package's graphs at ``model``'s published shapes, as meta tensors (Silero VAD left out: ~2 MB)."""
    from dataclasses import replace

    from edgevoice.models.llm import LlmStep
    from edgevoice.models.vocalnet.speech_decoder import speech_decoder_steps
    from edgevoice.recipes.vocalnet import graphs

    llm_config = replace(LLMS[model], max_context=max_context)
    with torch.device("meta"):
        listen = VocalNetListen(WHISPER_LARGE_V3, 5, 2048, llm_config.hidden)
        llm = LlmModel(llm_config)
        decoder = MtpSpeechDecoder(MtpDecoderConfig(width=llm_config.hidden))
        flow, hift = FlowModel(FlowConfig()), HiftGenerator(HiftConfig())
    steps = speech_decoder_steps(decoder)
    shared = {"shared_state_with": ["speech_text", "speech_units"]}
    modules = {
        "vn_listen": listen, "vn_llm": LlmStep(llm, tokens=None, inputs="embeds"),
        "speech_text": steps["speech_text"], "speech_units": steps["speech_units"],
        "flow_encoder": graphs.FlowEncoderStep(flow, 1054), "flow_step": graphs.FlowEulerStep(flow, 2108),
        "hift_source": graphs.HiftSourceGraph(hift, 256), "hift_decode": graphs.HiftDecodeGraph(hift, 256),
    }
    return [RecipeComponent(name, module, dict(shared) if name.startswith("speech_") else {}, "meta shapes")
            for name, module in modules.items()]


def published_models(max_context: int = 1024) -> dict[str, list[RecipeComponent]]:
    """Every published size's graphs (meta tensors), by model name, for the exporter's budget per target."""
    return {model: published_components(model, max_context) for model in LLMS}
