"""The text side of a VocalNet folder: prompt ids, the ids that end a reply, the decoder's closing row.

VocalNet was published on two LLM families, told apart by ``config.json → model_type``:

``omni_speech2s_llama`` (VocalNet-1B / 8B, Llama-3.2 / 3.1)
    prompt: ``preprocess_llama_3_v1`` + the assistant header (``edgevoice.models.vocalnet.prompt``);
    a reply ends at ``<|eot_id|>``, and the speech decoder's input is closed by that same
    token's embedding row.
``omni_speech2s_qwen`` (VocalNet-qwen25-7B, Qwen2.5)
    prompt: ``preprocess_qwen_2_5_v1`` + ``"\\n<|im_start|>assistant\\n"`` (``omni_speech/infer/vocalnet.py``
    ``VocalNetModel.__call__``); a reply ends at ``<|im_end|>`` (the streaming loop in
    ``omni_speech2s_qwen2.py`` ``streaming_generate_mtp`` stops there), and the speech decoder's
    input is closed by the embedding of ``<|endoftext|>`` (``txt_eos_emb``), not of the stop id.

The reference writes Qwen2.5's ids as numbers (151643, 151644, 151645, 77091, 198); here every id
comes from the folder's ``tokenizer.json`` by the token's name, and the Qwen prompt is rendered
from the folder's own chat template (``tokenizer_config.json → chat_template`` or
``chat_template.jinja``), the way ``apply_chat_template`` renders it.

``preprocess_qwen_2_5_v1`` renders the user turn through the template, which (given no system
message) first writes its default system block, then cuts ``[21:-1]``: with Qwen2.5's tokenizer
that is the default block (20 ids) and the user block's ``<|im_start|>``, and the trailing
newline. Here the cut is made after the last ``<|im_start|>`` before the speech placeholder, which
is the same 21 ids for Qwen2.5's tokenizer and stays on the block boundary for any other.

Stop ids: the reply-ending id plus ``generation_config.json → eos_token_id`` (what ``generate``
stops at in the non-streaming reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.prompt import (
    SPEECH_PLACEHOLDER,
    SPEECH_TEXT,
    llama3_prompt_ids,
)
from edgevoice.weights.vocalnet.checkpoint import BASE_MODEL_TYPES

TOKENIZER_FILE = "tokenizer.json"
# preprocess_qwen_2_5_v1's default system message (the Llama one is prompt.DEFAULT_SYSTEM).
QWEN_SYSTEM = (
    "You are Qwen, created by Alibaba Cloud. You are a helpful language and speech assistant. You are able to "
    "understand the speech content that the user provides, and assist the user with a variety of tasks using "
    "natural language and speech."
)
QWEN_ASSISTANT_HEADER = "\n<|im_start|>assistant\n"  # vocalnet.py appends these ids after the template's
QWEN_TURN_START = "<|im_start|>"
QWEN_REPLY_END = "<|im_end|>"  # the streaming loop's stop id
QWEN_ROW_END = "<|endoftext|>"  # txt_eos_emb; also what preprocess_qwen_2_5_v1 appends to the user turn
LLAMA_REPLY_END = "<|eot_id|>"  # stop id and closing row of the Llama family


@dataclass(frozen=True)
class ChatFacts:
    """What the host needs to talk to the LLM of one VocalNet folder."""

    family: str  # "llama" | "qwen2" (the LLM kind of ``BASE_MODEL_TYPES``)
    prompt_ids: tuple[int, ...]  # template ids with SPEECH_PLACEHOLDER where the speech rows go
    eot_id: int  # the id that ends a reply
    stop_ids: tuple[int, ...]  # every id that ends generation (eot_id included), sorted
    end_row_id: int  # its embedding row follows the last hidden state into the speech decoder


def read_chat_facts(folder: str | Path) -> ChatFacts:
    """The chat facts of a VocalNet folder (config.json, tokenizer files, generation_config.json)."""
    folder = Path(folder)
    model_type = _read_json(folder / "config.json").get("model_type")
    family = BASE_MODEL_TYPES.get(model_type or "")
    if family is None:
        raise EdgevoiceError(f"{folder}/config.json has model_type {model_type!r}; expected one of {sorted(BASE_MODEL_TYPES)}")
    tokenizer_path = folder / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise EdgevoiceError(f"{folder} has no {TOKENIZER_FILE}; download the folder's tokenizer files")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos = generation_eos_ids(folder / "generation_config.json")
    if family == "llama":
        eot = token_id(tokenizer, LLAMA_REPLY_END, tokenizer_path)
        prompt = tuple(int(i) for i in llama3_prompt_ids(tokenizer_path))
        return ChatFacts(family, prompt, eot, tuple(sorted({eot, *eos})), eot)
    eot = token_id(tokenizer, QWEN_REPLY_END, tokenizer_path)
    end_row = token_id(tokenizer, QWEN_ROW_END, tokenizer_path)
    prompt = qwen_prompt_ids(tokenizer, chat_template(folder), special_tokens(folder))
    return ChatFacts(family, tuple(prompt), eot, tuple(sorted({eot, *eos})), end_row)


# --- folder files ----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EdgevoiceError(f"{path} is missing; pass the published folder as downloaded")
    return json.loads(path.read_text())


def generation_eos_ids(path: Path) -> list[int]:
    """``eos_token_id`` of generation_config.json (an int or a list); none when the file is absent."""
    if not path.is_file():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id", [])
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos or []]


def token_id(tokenizer, name: str, source: Path) -> int:
    """The id of the special token ``name``; an error naming the file when it has none."""
    found = tokenizer.token_to_id(name)
    if found is None:
        raise EdgevoiceError(f"{source} has no {name} token; is it the tokenizer of this VocalNet model?")
    return int(found)


def chat_template(folder: Path) -> str:
    """The folder's chat template: tokenizer_config.json's (a string or the named "default") or chat_template.jinja."""
    config_path = folder / "tokenizer_config.json"
    template = json.loads(config_path.read_text()).get("chat_template") if config_path.is_file() else None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if not isinstance(template, str) or not template:
        raise EdgevoiceError(f"{folder} has no chat template (tokenizer_config.json chat_template or chat_template.jinja); "
                             "download the folder's tokenizer files")
    return template


def special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/pad/unk token texts of tokenizer_config.json, which templates may print."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    found = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            found[key] = value
    return found


# --- the Qwen prompt -------------------------------------------------------------------------


def render(template: str, messages: list[dict[str, str]], tokens: dict[str, str]) -> str:
    """``template`` rendered as transformers' apply_chat_template does (jinja2 sandbox, no generation prompt)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise EdgevoiceError(f"the folder's chat template refused the prompt: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=False, tools=None,
                                            documents=None, **tokens)


def encode_with_placeholder(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with SPEECH_PLACEHOLDER for each ``<speech>`` (an added token in the reference:
    the text splits at it before BPE)."""
    ids: list[int] = []
    for i, piece in enumerate(text.split(SPEECH_TEXT)):
        if i:
            ids.append(SPEECH_PLACEHOLDER)
        ids += tokenizer.encode(piece, add_special_tokens=False).ids
    return ids


def qwen_prompt_ids(tokenizer, template: str, tokens: dict[str, str], system: str = QWEN_SYSTEM) -> list[int]:
    """preprocess_qwen_2_5_v1 for one user turn of ``<speech>``, then the assistant header (see the module docstring)."""
    system_ids = encode_with_placeholder(tokenizer, render(template, [{"role": "system", "content": system}], tokens))
    user_ids = encode_with_placeholder(tokenizer, render(template, [{"role": "user", "content": SPEECH_TEXT}], tokens))
    if user_ids.count(SPEECH_PLACEHOLDER) != 1 or SPEECH_PLACEHOLDER in system_ids:
        raise EdgevoiceError("the folder's chat template does not print the user turn's content once; "
                             "use the tokenizer files published with the model")
    turn_start = token_id(tokenizer, QWEN_TURN_START, Path(TOKENIZER_FILE))
    before = user_ids[: user_ids.index(SPEECH_PLACEHOLDER)]
    if turn_start not in before:
        raise EdgevoiceError(f"the folder's chat template writes no {QWEN_TURN_START} before the user turn; "
                             "is it a Qwen2.5 (ChatML) template?")
    cut = len(before) - before[::-1].index(turn_start)  # just past the user block's <|im_start|>
    end_row = token_id(tokenizer, QWEN_ROW_END, Path(TOKENIZER_FILE))
    header = tokenizer.encode(QWEN_ASSISTANT_HEADER, add_special_tokens=False).ids
    return system_ids + user_ids[cut:-1] + [end_row] + header
