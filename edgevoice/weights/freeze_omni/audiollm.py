"""Load Freeze-Omni's listen path: ``checkpoints/audiollm/{final.pt,train.yaml,global_cmvn}`` + a Qwen2 directory.

``final.pt`` is a flat dict of tensors (mostly bf16) for the encoder, the adapter (prefix
``adpter.``, the upstream spelling; ``bn2`` is a LayerNorm), the prompt and task embeddings and
the turn-state head. The reference loads it with ``strict=False``, so a misspelt key would be
ignored silently there; here every tensor must be used exactly once, and the error names every
leftover, missing or mis-shaped key. ``task_embeddings`` are training-only: they are checked and
then set aside on purpose.

All sizes come from ``train.yaml``, ``global_cmvn`` and the tensor shapes; where both say
something they must agree. The LLM (stock Qwen2, not in the checkpoint) loads from its Hugging
Face directory through ``edgevoice.weights.llm.hf``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.models.freeze_omni.adapter import FoAdapter, FoAdapterConfig
from edgevoice.models.freeze_omni.encoder import FoEncoder, FoEncoderConfig
from edgevoice.models.freeze_omni.frontend import FbankConfig, FoFrontend
from edgevoice.models.freeze_omni.state_head import StateHead
from edgevoice.models.llm import LlmModel
from edgevoice.weights.freeze_omni.chat_template import end_of_turn_id, parse_chat_template
from edgevoice.weights.llm.hf import load_llm_hf
from edgevoice.weights.pt_checkpoint import load_pt_tensors
from edgevoice.weights.strict import load_state_strict

# Prompt pieces of Qwen2's ChatML as the reference's AudioLLM builds them around the audio, from
# the published chat template (a checkpoint's own come from its train.yaml: chat_template.py).
SYSTEM_PREFIX = "<|im_start|>system\n"  # + role text, no <|im_end|> (the turn prefix closes it)
TURN_PREFIX_AFTER_EOD = "\n<|im_start|>user\n"  # preceded by the eod id, then the prompt embeddings
RESPONSE_PREFIX = "<|im_end|>\n<|im_start|>assistant\n"  # fed when the head says 'ss'

# checkpoint key -> (part, our parameter name); the first matching rule wins.
_KEY_RULES: tuple[tuple[str, str, str], ...] = (
    (r"encoder\.global_cmvn\.(mean|istd)", "frontend", r"cmvn_\1"),
    (r"encoder\.enc\.0\.core\.conv\.0\.(weight|bias)", "encoder", r"subsampling.conv1.\1"),
    (r"encoder\.enc\.0\.core\.conv\.2\.(weight|bias)", "encoder", r"subsampling.conv2.\1"),
    (r"encoder\.enc\.0\.core\.out\.0\.(weight|bias)", "encoder", r"subsampling.out.\1"),
    (r"encoder\.enc\.1\.embed\.0\.(weight|bias)", "encoder", r"input_linear.\1"),
    (r"encoder\.enc\.1\.embed\.1\.(weight|bias)", "encoder", r"input_norm.\1"),
    (r"encoder\.enc\.1\.encoders\.(\d+)\.(.+)", "encoder", r"blocks.\1.\2"),
    (r"encoder\.enc\.1\.after_norm\.(weight|bias)", "encoder", r"after_norm.\1"),
    (r"adpter\.conv1d2\.(weight|bias)", "adapter", r"conv.\1"),
    (r"adpter\.bn2\.(weight|bias)", "adapter", r"norm.\1"),
    (r"adpter\.project\.(weight|bias)", "adapter", r"project.\1"),
    (r"predictor_head\.(weight|bias)", "state_head", r"linear.\1"),
    (r"prompt_embeddings\.weight", "prompt", "prompt_embeddings"),
    (r"task_embeddings\.weight", "training_only", "task_embeddings"),
)


@dataclass(frozen=True)
class FoPrompt:
    """Token ids and prompt facts the listen loop needs (from train.yaml and the LLM tokenizer)."""

    eod_id: int  # <|im_end|>: ends a turn; the next user turn starts with it
    turn_prefix_ids: tuple[int, ...]  # eod + "\n<|im_start|>user\n", fed before the prompt embeddings
    response_prefix_ids: tuple[int, ...]  # "<|im_end|>\n<|im_start|>assistant\n" (stat 'ss')
    system_prefix_ids: tuple[int, ...]  # "<|im_start|>system\n"; the role text follows (stat 'pre')


@dataclass
class FoListen:
    """The listen path as torch modules, float32, eval mode."""

    frontend: FoFrontend
    encoder: FoEncoder
    adapter: FoAdapter
    llm: LlmModel
    state_head: StateHead
    prompt_embeddings: torch.Tensor  # (prompt_num, hidden): fed after the turn prefix of every user turn
    prompt: FoPrompt
    tokenizer_json: str | None  # the LLM's tokenizers JSON; None for random weights
    source: str  # where the weights came from


def load_listen(checkpoints_dir: str | Path, llm_dir: str | Path, max_context: int = 1024,
                prefill_max_tokens: int = 64) -> FoListen:
    """The listen path from Freeze-Omni's ``checkpoints/`` folder (or its ``audiollm/``) and a Qwen2 directory."""
    audiollm = _audiollm_dir(Path(checkpoints_dir))
    train = _read_yaml(audiollm / "train.yaml")
    cmvn = _read_cmvn(audiollm / "global_cmvn")
    state = {name: _as_float32(name, t, audiollm / "final.pt") for name, t in load_pt_tensors(audiollm / "final.pt").items()}
    parts = _split_by_part(state, str(audiollm / "final.pt"))
    encoder_cfg = _encoder_config(train, parts["encoder"], len(cmvn[0]))
    adapter_cfg = _adapter_config(train, parts["adapter"], encoder_cfg)
    frontend = FoFrontend(_fbank_config(train, encoder_cfg))
    if not parts["frontend"]:  # the reference computes them from global_cmvn unless the checkpoint has them
        parts["frontend"] = {"cmvn_mean": cmvn[0], "cmvn_istd": cmvn[1]}
    encoder, adapter = FoEncoder(encoder_cfg), FoAdapter(adapter_cfg)
    head = StateHead(adapter_cfg.out_dim, _rows(parts["state_head"], "linear.weight", "predictor_head.weight"))
    source = str(audiollm / "final.pt")
    _load_parts(source, {"frontend": frontend, "encoder": encoder, "adapter": adapter, "state_head": head}, parts)
    prompt_embeddings = _prompt_embeddings(train, parts, adapter_cfg.out_dim, source)
    llm = load_llm_hf(llm_dir, max_context, prefill_max_tokens)
    _check_llm(train, llm, adapter_cfg, Path(llm_dir))
    tokenizer_json, prompt = _prompt_ids(Path(llm_dir), train)
    return FoListen(frontend.eval(), encoder.eval(), adapter.eval(), llm, head.eval(), prompt_embeddings, prompt,
                    tokenizer_json, f"{audiollm} + {llm_dir}")


# --- files ---------------------------------------------------------------------------------------


def _audiollm_dir(path: Path) -> Path:
    for candidate in (path / "audiollm", path):
        if (candidate / "train.yaml").is_file() and (candidate / "final.pt").is_file():
            return candidate
    raise EdgevoiceError(f"{path} has no audiollm/train.yaml + audiollm/final.pt; pass Freeze-Omni's checkpoints/ folder")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError.for_module("yaml", "export", "reading Freeze-Omni's train.yaml") from exc
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgevoiceError(f"{path} is not valid YAML ({exc}); restore the published train.yaml") from exc
    if not isinstance(data, dict):
        raise EdgevoiceError(f"{path} does not hold a YAML mapping; restore the published train.yaml")
    return data


def _read_cmvn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, istd) float32 from the JSON stats, computed in float64 as the reference does."""
    if not path.is_file():
        raise EdgevoiceError(f"{path} is missing; restore global_cmvn next to train.yaml")
    try:
        stats = json.loads(path.read_text())
        mean_stat = torch.tensor(stats["mean_stat"], dtype=torch.float64)
        var_stat = torch.tensor(stats["var_stat"], dtype=torch.float64)
        count = float(stats["frame_num"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgevoiceError(f"{path} is not Freeze-Omni's JSON CMVN (mean_stat/var_stat/frame_num): {exc}") from exc
    if mean_stat.shape != var_stat.shape or mean_stat.ndim != 1 or count <= 0:
        raise EdgevoiceError(f"{path} has mean_stat/var_stat of different lengths or no frames; restore it")
    mean = mean_stat / count
    variance = torch.clamp(var_stat / count - mean * mean, min=1e-20)
    return mean.float(), (1.0 / torch.sqrt(variance)).float()


def _as_float32(name: str, tensor: torch.Tensor, source: Path) -> torch.Tensor:
    if not tensor.is_floating_point():
        raise EdgevoiceError(f"tensor '{name}' in {source} has dtype {tensor.dtype}, expected a float; is it the right file?")
    return tensor.float().contiguous()


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise EdgevoiceError(f"train.yaml has no '{dotted}'; restore the published train.yaml")
        node = node[key]
    return node


# --- key accounting ------------------------------------------------------------------------------


def _split_by_part(state: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpoint tensors grouped by part under our names; any key no rule claims is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for _, part, _ in _KEY_RULES}
    leftover = []
    for key, tensor in state.items():
        for pattern, part, target in _KEY_RULES:
            if re.fullmatch(pattern, key):
                parts[part][re.sub(pattern, target, key)] = tensor
                break
        else:
            leftover.append(key)
    if leftover:
        raise EdgevoiceError(f"{source} has tensors the listen path does not use: {sorted(leftover)}; is it Freeze-Omni's audiollm/final.pt?")
    return parts


def _rows(part: dict[str, torch.Tensor], name: str, key: str) -> int:
    if name not in part or part[name].ndim != 2:
        raise EdgevoiceError(f"checkpoint tensor '{key}' is missing or not a matrix; is it Freeze-Omni's audiollm/final.pt?")
    return int(part[name].shape[0])


def _checkpoint_key(part: str, ours: str) -> str:
    """Our parameter name back to the checkpoint's spelling, for error messages."""
    names = {"frontend": [("cmvn_", "encoder.global_cmvn.")], "state_head": [("linear.", "predictor_head.")],
             "adapter": [("conv.", "adpter.conv1d2."), ("norm.", "adpter.bn2."), ("project.", "adpter.project.")],
             "encoder": [("subsampling.conv1.", "encoder.enc.0.core.conv.0."), ("subsampling.conv2.", "encoder.enc.0.core.conv.2."),
                         ("subsampling.out.", "encoder.enc.0.core.out.0."), ("input_linear.", "encoder.enc.1.embed.0."),
                         ("input_norm.", "encoder.enc.1.embed.1."), ("blocks.", "encoder.enc.1.encoders."),
                         ("after_norm.", "encoder.enc.1.after_norm.")]}
    for prefix, theirs in names.get(part, []):
        if ours.startswith(prefix):
            return theirs + ours[len(prefix) :]
    return ours


def _load_parts(source: str, modules: dict[str, torch.nn.Module], parts: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every module gets exactly its tensors; the error lists all missing, extra and mis-shaped keys at once."""
    problems = []
    for part, module in modules.items():
        expected, given = module.state_dict(), parts[part]
        problems += [f"missing {_checkpoint_key(part, n)}" for n in sorted(set(expected) - set(given))]
        problems += [f"unexpected {_checkpoint_key(part, n)}" for n in sorted(set(given) - set(expected))]
        problems += [
            f"{_checkpoint_key(part, n)} has shape {tuple(t.shape)}, expected {tuple(expected[n].shape)}"
            for n, t in sorted(given.items()) if n in expected and t.shape != expected[n].shape
        ]
    if problems:
        raise EdgevoiceError(f"{source} does not fit train.yaml: {'; '.join(problems)}; is train.yaml from the same checkpoint?")
    for part, module in modules.items():
        load_state_strict(module, parts[part], source)


# --- configs -------------------------------------------------------------------------------------


def _require(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise EdgevoiceError(f"train.yaml sets {what} = {actual!r}; edgevoice's Freeze-Omni listen path supports {expected!r} only")


def _agree(yaml_value: Any, tensor_value: int, what: str) -> int:
    if int(yaml_value) != tensor_value:
        raise EdgevoiceError(f"train.yaml says {what} = {yaml_value} but the checkpoint tensors say {tensor_value}; use matching files")
    return tensor_value


def _encoder_config(train: dict[str, Any], enc: dict[str, torch.Tensor], input_dim: int) -> FoEncoderConfig:
    para = _get(train, "encoder_conf.para_conf")
    tf, sub = para.get("transformer", {}), para.get("subsampling", {})
    _require(_get(train, "encoder_conf.overview_conf").get("encoder-layer-config"), "subsampling-transformer", "encoder-layer-config")
    _require(sub.get("subsampling-rate"), 4, "subsampling-rate")
    for key, value in (("pos-enc-class", "rel-enc"), ("normalize-before", True), ("concat-after", False),
                       ("input-layer", "linear"), ("positionwise-layer-type", "linear")):
        _require(tf.get(f"transformer-{key}"), value, f"transformer-{key}")
    _agree(_get(train, "encoder_conf.overview_conf").get("encoder-input-dim", input_dim), input_dim, "encoder-input-dim (global_cmvn bins)")
    blocks = {int(m[1]) for name in enc if (m := re.match(r"blocks\.(\d+)\.", name))}
    if "subsampling.conv1.weight" not in enc or "blocks.0.self_attn.pos_bias_u" not in enc or "blocks.0.feed_forward.w_1.weight" not in enc:
        raise EdgevoiceError("the checkpoint lacks encoder tensors (encoder.enc.0.core.conv.0.weight, ...); is it Freeze-Omni's audiollm/final.pt?")
    config = FoEncoderConfig(
        input_dim=input_dim,
        d_model=_agree(tf.get("transformer-attention-dim"), int(enc["subsampling.conv1.weight"].shape[0]), "transformer-attention-dim"),
        heads=_agree(tf.get("transformer-attention-heads"), int(enc["blocks.0.self_attn.pos_bias_u"].shape[0]), "transformer-attention-heads"),
        layers=_agree(tf.get("transformer-num-blocks"), len(blocks), "transformer-num-blocks"),
        ffn=_agree(tf.get("transformer-linear-units"), int(enc["blocks.0.feed_forward.w_1.weight"].shape[0]), "transformer-linear-units"),
        chunk_size=int(tf.get("transformer-chunk_size", 0)),
        left_chunks=int(tf.get("transformer-left_chunks", 0)),
    )
    if config.chunk_size <= 0 or config.left_chunks <= 0:
        raise EdgevoiceError("train.yaml sets no positive transformer-chunk_size/left_chunks; the streaming encoder needs both")
    return config


def _adapter_config(train: dict[str, Any], adapter: dict[str, torch.Tensor], encoder: FoEncoderConfig) -> FoAdapterConfig:
    model = _get(train, "model_conf")
    _require(model.get("adpter_type"), "subsampling", "model_conf.adpter_type")
    _require(model.get("norm"), "layer", "model_conf.norm")
    _require(model.get("activation_func"), "gelu", "model_conf.activation_func")
    _require(model.get("add_prompt_before"), True, "model_conf.add_prompt_before")
    if "conv.weight" not in adapter or "project.weight" not in adapter:
        raise EdgevoiceError("the checkpoint lacks adpter.conv1d2.weight or adpter.project.weight; only the single-conv adapter is supported")
    conv, project = adapter["conv.weight"], adapter["project.weight"]  # (C, d, k), (hidden, C)
    enc_out = _agree(model.get("enc_out_dim"), encoder.d_model, "model_conf.enc_out_dim")
    hidden = _agree(model.get("llm_embed_dim"), int(project.shape[0]), "model_conf.llm_embed_dim")
    if enc_out * 4 < hidden:  # the reference then builds a two-conv adapter edgevoice does not implement
        raise EdgevoiceError(f"enc_out_dim {enc_out} x 4 < llm_embed_dim {hidden} selects the two-conv adapter, which is not supported")
    return FoAdapterConfig(in_dim=enc_out, conv_channels=int(conv.shape[0]), out_dim=hidden,
                           kernel=_agree(model.get("kernel_size"), int(conv.shape[2]), "model_conf.kernel_size"),
                           chunk_frames=encoder.chunk_size)


def _fbank_config(train: dict[str, Any], encoder: FoEncoderConfig) -> FbankConfig:
    fbank = _get(train, "dataset_conf.fbank_conf")
    rate = int(train.get("dataset_conf", {}).get("resample_conf", {}).get("resample_rate", 16000))
    _agree(fbank.get("num_mel_bins"), encoder.input_dim, "dataset_conf.fbank_conf.num_mel_bins")
    # The reference's inference front end runs without dither whatever training used.
    return FbankConfig(sample_rate=rate, mel_bins=encoder.input_dim, frame_length_ms=float(fbank["frame_length"]),
                       frame_shift_ms=float(fbank["frame_shift"]), new_frames=4 * encoder.chunk_size, overlap_frames=3)


def _prompt_embeddings(train: dict[str, Any], parts: dict[str, dict[str, torch.Tensor]], hidden: int, source: str) -> torch.Tensor:
    model = _get(train, "model_conf")
    checks = (("prompt", "prompt_embeddings", "prompt_num"), ("training_only", "task_embeddings", "task_num"))
    for part, name, count_key in checks:
        tensor = parts[part].get(name)
        if tensor is None:
            raise EdgevoiceError(f"{source} has no '{name}.weight'; is it Freeze-Omni's audiollm/final.pt?")
        if tensor.ndim != 2 or tensor.shape[1] != hidden:
            raise EdgevoiceError(f"'{name}.weight' in {source} has shape {tuple(tensor.shape)}, expected (n, {hidden})")
        _agree(model.get(count_key), int(tensor.shape[0]), f"model_conf.{count_key}")
    # task_embeddings: trained for multi-task prompts, never read at inference; accounted for above and dropped.
    return parts["prompt"]["prompt_embeddings"]


def _check_llm(train: dict[str, Any], llm: LlmModel, adapter: FoAdapterConfig, llm_dir: Path) -> None:
    model, c = _get(train, "model_conf"), llm.config
    if not c.qkv_bias:
        raise EdgevoiceError(f"{llm_dir} is not a Qwen2 model; Freeze-Omni's listen path needs its Qwen2 LLM")
    for what, yaml_value, actual in (("hidden_size", adapter.out_dim, c.hidden), ("llm_head_num", model.get("llm_head_num", c.heads), c.heads),
                                     ("num_key_value_heads", model.get("num_key_value_heads", c.kv_heads), c.kv_heads)):
        if int(yaml_value) != actual:
            raise EdgevoiceError(f"{llm_dir} has {what} {actual} but train.yaml/the adapter expect {yaml_value}; pass the matching LLM")


def _prompt_ids(llm_dir: Path, train: dict[str, Any]) -> tuple[str, FoPrompt]:
    """Prompt ids from train.yaml's chat template and the LLM tokenizer, as ``AudioLLM.__init__`` makes them."""
    from tokenizers import Tokenizer

    path = llm_dir / "tokenizer.json"
    if not path.is_file():
        raise EdgevoiceError(f"{llm_dir} has no tokenizer.json; save the LLM's tokenizer there")
    text = path.read_text()
    tokenizer = Tokenizer.from_str(text)

    def ids(s: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(s, add_special_tokens=False).ids)

    template = parse_chat_template(_get(train, "model_conf.chat_template"))
    configured = ((train.get("dataset_conf") or {}).get("tokenize_conf") or {}).get("eod_id")  # optional
    eod_id = end_of_turn_id(lambda s: list(ids(s)), configured)
    prompt = FoPrompt(eod_id=eod_id, turn_prefix_ids=(eod_id, *ids(template.turn_prefix)),
                      response_prefix_ids=ids(template.response_prefix), system_prefix_ids=ids(SYSTEM_PREFIX))
    return text, prompt
