"""The prompt pieces Freeze-Omni builds from ``model_conf.chat_template`` in ``train.yaml``.

The reference (``models/audioLLM.py``, ``AudioLLM.__init__`` in chat mode) splits the template at
``<audio>``; the part before it at ``<|im_end|>``: the text before that is the default system
role, the text after it (``"\\n<|im_start|>user\\n"`` in the published file) is the turn prefix,
fed after the end-of-turn id at the start of every user turn; the part after ``<audio>``
(``"<|im_end|>\\n<|im_start|>assistant\\n"``) is the response prefix, fed when the head says
respond. The end-of-turn id is what the tokenizer makes of ``<|im_end|>`` (it must be one token);
``dataset_conf.tokenize_conf.eod_id``, where train.yaml sets it, must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgevoice.errors import EdgevoiceError

AUDIO_MARK = "<audio>"
END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class ChatTemplate:
    """The template's text pieces, before tokenization."""

    role: str  # the default system turn without its closing <|im_end|> ("<|im_start|>system\nYou are ...")
    turn_prefix: str  # after the end-of-turn id, before the prompt embeddings and the audio
    response_prefix: str  # fed when the model is to answer


def parse_chat_template(template: Any) -> ChatTemplate:
    """The reference's split of ``model_conf.chat_template``; a template it could not split is an error."""
    if not isinstance(template, str) or template.count(AUDIO_MARK) != 1:
        raise EdgevoiceError(f"train.yaml model_conf.chat_template must be text with one '{AUDIO_MARK}' mark; "
                             "restore the published train.yaml")
    before, after = template.split(AUDIO_MARK)
    pieces = before.split(END_OF_TURN)
    if len(pieces) < 2:
        raise EdgevoiceError(f"train.yaml model_conf.chat_template has no '{END_OF_TURN}' before '{AUDIO_MARK}' "
                             "(it closes the system turn); restore the published train.yaml")
    return ChatTemplate(role=pieces[0], turn_prefix=pieces[1], response_prefix=after)


def end_of_turn_id(encode: Callable[[str], list[int]], configured: Any) -> int:
    """The tokenizer's id of ``<|im_end|>``, checked against train.yaml's ``tokenize_conf.eod_id`` (None: unset)."""
    ids = encode(END_OF_TURN)
    if len(ids) != 1:
        raise EdgevoiceError(f"the LLM tokenizer splits '{END_OF_TURN}' into {len(ids)} tokens {ids}; "
                             "pass --llm the Qwen2 directory Freeze-Omni was trained on")
    if configured is not None and int(configured) != ids[0]:
        raise EdgevoiceError(f"train.yaml sets tokenize_conf.eod_id {configured} but the tokenizer's '{END_OF_TURN}' "
                             f"is {ids[0]}; use the tokenizer and train.yaml of one release")
    return ids[0]
