"""Read a CosyVoice2 folder (``cosyvoice.yaml`` + ``flow.pt`` + ``hift.pt``) as VocalNet uses it.

``cosyvoice.yaml`` is a HyperPyYAML file (``!new:``, ``!name:``, ``!apply:`` and ``!ref`` tags). We
never instantiate anything from it: a plain PyYAML loader reads every tagged node as the mapping,
list or scalar under the tag, and ``!ref <name>`` is resolved against the top-level keys. Only
the numbers the models need are taken from it; every other size comes from the checkpoint shapes.

The flow readers are the ``flow_*`` functions; the vocoder readers live beside them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError, MissingDependencyError
from edgevoice.models.vocalnet.flow import FlowConfig, FlowModel
from edgevoice.models.vocalnet.flow_encoder import FlowEncoderConfig
from edgevoice.models.vocalnet.flow_estimator import EstimatorConfig
from edgevoice.models.vocalnet.hift import HiftConfig, HiftGenerator
from edgevoice.weights.pt_checkpoint import load_pt_tensors
from edgevoice.weights.strict import load_state_strict

YAML_NAME = "cosyvoice.yaml"
FLOW_NAME = "flow.pt"
_REF = re.compile(r"^<([A-Za-z_][A-Za-z0-9_]*)>$")


# --- cosyvoice.yaml ----------------------------------------------------------------------------

def read_cosyvoice_yaml(path: Path) -> dict[str, Any]:
    """The yaml as plain dicts/lists/scalars with top-level ``!ref <name>`` values substituted."""
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError.for_module("yaml", "export", "reading cosyvoice.yaml") from exc

    class _TagsAsData(yaml.SafeLoader):
        """SafeLoader that reads any ``!tag`` node as its plain content (nothing is constructed)."""

    def plain(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    _TagsAsData.add_multi_constructor("!", plain)
    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"{path} does not exist; point at a CosyVoice2 folder that holds {YAML_NAME}")
    try:
        data = yaml.load(path.read_text(), Loader=_TagsAsData)
    except yaml.YAMLError as exc:
        raise EdgevoiceError(f"{path} is not readable yaml ({str(exc).splitlines()[0]}); restore the published file") from exc
    if not isinstance(data, dict):
        raise EdgevoiceError(f"{path} does not hold a yaml mapping; restore the published {YAML_NAME}")
    return _resolve_refs(data, data)


def _resolve_refs(value: Any, top: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_refs(v, top) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, top) for v in value]
    if isinstance(value, str) and (match := _REF.match(value)) and match.group(1) in top:
        return top[match.group(1)]
    return value


def _field(section: dict[str, Any], key: str, where: str, kind: type = int) -> Any:
    if key not in section:
        raise EdgevoiceError(f"{YAML_NAME} has no '{where}.{key}'; restore the published file")
    try:
        return kind(section[key])
    except (TypeError, ValueError) as exc:
        raise EdgevoiceError(f"{YAML_NAME} '{where}.{key}' = {section[key]!r} is not a {kind.__name__}") from exc


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise EdgevoiceError(f"{YAML_NAME} has no '{where}{key}' section; restore the published file")
    return value


# --- flow ----------------------------------------------------------------------------------------

def flow_config_from_yaml(data: dict[str, Any], up_blocks: int = 4) -> FlowConfig:
    """FlowConfig from the parsed yaml's ``flow:`` section.

    ``up_blocks`` is not in the yaml (the reference hard-codes 4); ``flow_up_blocks`` counts it in
    the checkpoint. The chunk sizes are the ones CosyVoice2Model imposes: 2*input_frame_rate
    tokens for the encoder and token_mel_ratio times that (frames) for the estimator.
    """
    flow = _section(data, "flow", "")
    enc, cfm = _section(flow, "encoder", "flow."), _section(flow, "decoder", "flow.")
    est, params = _section(cfm, "estimator", "flow.decoder."), _section(cfm, "cfm_params", "flow.decoder.")
    params = params.get("content", params)  # wrapped in !new:omegaconf.DictConfig
    _require_reference_layout(flow, enc, est)
    frame_rate, ratio = _field(flow, "input_frame_rate", "flow"), _field(flow, "token_mel_ratio", "flow")
    chunk_tokens = 2 * frame_rate
    encoder = FlowEncoderConfig(
        input_size=_field(enc, "input_size", "flow.encoder"),
        width=_field(enc, "output_size", "flow.encoder"),
        heads=_field(enc, "attention_heads", "flow.encoder"),
        ffn=_field(enc, "linear_units", "flow.encoder"),
        blocks=_field(enc, "num_blocks", "flow.encoder"),
        up_blocks=up_blocks,
        pre_lookahead=_field(flow, "pre_lookahead_len", "flow"),
        upsample=ratio,
        chunk_tokens=chunk_tokens,
    )
    estimator = EstimatorConfig(
        in_channels=_field(est, "in_channels", "flow.decoder.estimator"),
        out_channels=_field(est, "out_channels", "flow.decoder.estimator"),
        channels=tuple(int(c) for c in est.get("channels", [256])),
        head_dim=_field(est, "attention_head_dim", "flow.decoder.estimator"),
        heads=_field(est, "num_heads", "flow.decoder.estimator"),
        blocks=_field(est, "n_blocks", "flow.decoder.estimator"),
        mid_blocks=_field(est, "num_mid_blocks", "flow.decoder.estimator"),
        act_fn=str(est.get("act_fn", "gelu")),
        chunk_frames=chunk_tokens * ratio,
    )
    return FlowConfig(
        vocab_size=_field(flow, "vocab_size", "flow"),
        mel_bins=_field(flow, "output_size", "flow"),
        spk_embed_dim=_field(flow, "spk_embed_dim", "flow"),
        input_frame_rate=frame_rate,
        token_mel_ratio=ratio,
        pre_lookahead=encoder.pre_lookahead,
        cfg_rate=_field(params, "inference_cfg_rate", "flow.decoder.cfm_params", float),
        t_scheduler=str(params.get("t_scheduler", "cosine")),
        encoder=encoder,
        estimator=estimator,
    )


def _require_reference_layout(flow: dict, enc: dict, est: dict) -> None:
    """Refuse yaml choices this implementation does not build (other CosyVoice variants)."""
    expected = {
        ("flow.encoder", "input_layer"): (enc, "linear"),
        ("flow.encoder", "pos_enc_layer_type"): (enc, "rel_pos_espnet"),
        ("flow.encoder", "selfattention_layer_type"): (enc, "rel_selfattn"),
        ("flow.encoder", "normalize_before"): (enc, True),
        ("flow.encoder", "use_cnn_module"): (enc, False),
        ("flow.encoder", "macaron_style"): (enc, False),
        ("flow.decoder.estimator", "causal"): (est, True),
    }
    for (where, key), (section, want) in expected.items():
        if section.get(key, want) != want:
            raise EdgevoiceError(
                f"{YAML_NAME} sets {where}.{key} = {section[key]!r}; only the CosyVoice2 flow ({key} = {want!r}) is supported"
            )


def flow_up_blocks(state: dict[str, torch.Tensor]) -> int:
    """How many up conformer blocks the checkpoint holds (``encoder.up_encoders.{i}.*``)."""
    found = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.up_encoders\.(\d+)\.", k))}
    if not found:
        raise EdgevoiceError("flow.pt has no encoder.up_encoders.* tensors; is it a CosyVoice2 flow checkpoint?")
    return max(found) + 1


def flow_state(path: Path) -> dict[str, torch.Tensor]:
    """flow.pt as contiguous float32 tensors (the file may store strided views of shared pools)."""
    return {name: tensor.contiguous().float() for name, tensor in load_pt_tensors(Path(path)).items()}


def load_flow(cosyvoice_dir: Path) -> FlowModel:
    """The flow of a CosyVoice2 folder, built from its yaml and loaded strictly from flow.pt."""
    cosyvoice_dir = Path(cosyvoice_dir)
    state = flow_state(cosyvoice_dir / FLOW_NAME)
    cfg = flow_config_from_yaml(read_cosyvoice_yaml(cosyvoice_dir / YAML_NAME), up_blocks=flow_up_blocks(state))
    model = FlowModel(cfg)
    load_state_strict(model, state, str(cosyvoice_dir / FLOW_NAME))
    return model.eval()


# --- hift (vocoder) ------------------------------------------------------------------------------

HIFT_NAME = "hift.pt"


def hift_config_from_yaml(data: dict[str, Any]) -> HiftConfig:
    """HiftConfig from the parsed yaml's ``hift:`` section (and its ``f0_predictor``)."""
    hift = _section(data, "hift", "")
    istft = _section(hift, "istft_params", "hift.")
    f0 = _section(hift, "f0_predictor", "hift.")
    if _field(f0, "num_class", "hift.f0_predictor") != 1:
        raise EdgevoiceError(f"{YAML_NAME} 'hift.f0_predictor.num_class' is not 1; only a single F0 output is supported")
    return HiftConfig(
        in_channels=_field(hift, "in_channels", "hift"),
        base_channels=_field(hift, "base_channels", "hift"),
        nb_harmonics=_field(hift, "nb_harmonics", "hift"),
        sampling_rate=_field(hift, "sampling_rate", "hift"),
        nsf_alpha=_field(hift, "nsf_alpha", "hift", float),
        nsf_sigma=_field(hift, "nsf_sigma", "hift", float),
        voiced_threshold=_field(hift, "nsf_voiced_threshold", "hift", float),
        upsample_rates=_hift_ints(hift, "upsample_rates"),
        upsample_kernel_sizes=_hift_ints(hift, "upsample_kernel_sizes"),
        n_fft=_field(istft, "n_fft", "hift.istft_params"),
        hop_len=_field(istft, "hop_len", "hift.istft_params"),
        resblock_kernel_sizes=_hift_ints(hift, "resblock_kernel_sizes"),
        resblock_dilation_sizes=_hift_int_lists(hift, "resblock_dilation_sizes"),
        source_resblock_kernel_sizes=_hift_ints(hift, "source_resblock_kernel_sizes"),
        source_resblock_dilation_sizes=_hift_int_lists(hift, "source_resblock_dilation_sizes"),
        lrelu_slope=_field(hift, "lrelu_slope", "hift", float),
        audio_limit=_field(hift, "audio_limit", "hift", float),
        f0_cond_channels=_field(f0, "cond_channels", "hift.f0_predictor"),
    )


def _hift_ints(section: dict[str, Any], key: str) -> tuple[int, ...]:
    value = section.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise EdgevoiceError(f"{YAML_NAME} 'hift.{key}' = {value!r} is not a list of integers; restore the published file")
    return tuple(value)


def _hift_int_lists(section: dict[str, Any], key: str) -> tuple[tuple[int, ...], ...]:
    value = section.get(key)
    if not isinstance(value, list) or not all(isinstance(v, list) and all(isinstance(i, int) for i in v) for v in value):
        raise EdgevoiceError(f"{YAML_NAME} 'hift.{key}' = {value!r} is not a list of integer lists; restore the published file")
    return tuple(tuple(v) for v in value)


def hift_fold_weight_norm(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Replace each ``X.weight_g`` / ``X.weight_v`` pair by ``X.weight = g·v/‖v‖`` (norm over all but dim 0).

    The reference keeps weight norm live (g·v/‖v‖ at every call); folding once gives the same
    weights. Conv1d and ConvTranspose1d both normalise over dims 1.. (their ``weight_g`` is [dim0, 1, 1]).
    A ``generator.`` prefix (a HiFiGan training checkpoint) is stripped, as the reference does.
    """
    state = {name.removeprefix("generator."): tensor.contiguous().float() for name, tensor in state.items()}
    folded = {name: t for name, t in state.items() if not name.endswith((".weight_g", ".weight_v"))}
    prefixes = {name.rsplit(".", 1)[0] for name in state if name.endswith((".weight_g", ".weight_v"))}
    for prefix in sorted(prefixes):
        g, v = state.get(f"{prefix}.weight_g"), state.get(f"{prefix}.weight_v")
        if g is None or v is None:
            half = "weight_g" if g is None else "weight_v"
            raise EdgevoiceError(f"{source} has {prefix} weight norm without '{prefix}.{half}'; is the file complete?")
        if f"{prefix}.weight" in folded:
            raise EdgevoiceError(f"{source} has both '{prefix}.weight' and its weight-norm pair; is it a HiFT state dict?")
        if g.numel() != v.shape[0]:
            raise EdgevoiceError(f"{source} '{prefix}.weight_g' has shape {tuple(g.shape)}, expected [{v.shape[0]}, 1, 1]")
        v64 = v.double()
        norm = v64.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
        folded[f"{prefix}.weight"] = (g.double().reshape_as(norm) * v64 / norm).float()
    return folded


def hift_load(cosyvoice_dir: Path) -> HiftGenerator:
    """The HiFT vocoder of a CosyVoice2 folder, sized from its yaml and loaded strictly from hift.pt."""
    cosyvoice_dir = Path(cosyvoice_dir)
    path = cosyvoice_dir / HIFT_NAME
    config = hift_config_from_yaml(read_cosyvoice_yaml(cosyvoice_dir / YAML_NAME))
    model = HiftGenerator(config)
    load_state_strict(model, hift_fold_weight_norm(load_pt_tensors(path), str(path)), str(path))
    return model.eval()
