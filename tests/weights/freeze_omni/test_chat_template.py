"""Prompt ids from train.yaml's chat template and the tokenizer, as the reference builds them.

Reference: models/audioLLM.py ``AudioLLM.__init__`` (chat mode): the template is split at
``<audio>`` and ``<|im_end|>``; ``eod_id = tokenizer('<|im_end|>')['input_ids'][0]``.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from fo_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.freeze_omni.audiollm import RESPONSE_PREFIX, SYSTEM_PREFIX, TURN_PREFIX_AFTER_EOD, _prompt_ids
from edgevoice.weights.freeze_omni.chat_template import end_of_turn_id, parse_chat_template

PUBLISHED = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<audio><|im_end|>\n"
             "<|im_start|>assistant\n")


def test_published_template_gives_the_chatml_pieces():
    """models/audioLLM.py ``AudioLLM.__init__``: role = before <|im_end|>, prefix = after it, suffix = after <audio>."""
    template = parse_chat_template(PUBLISHED)
    assert template.role == SYSTEM_PREFIX + "You are a helpful assistant."
    assert (template.turn_prefix, template.response_prefix) == (TURN_PREFIX_AFTER_EOD, RESPONSE_PREFIX)


@pytest.mark.parametrize("template, words", [
    ("<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\n<|im_end|>", "one '<audio>'"),
    (PUBLISHED + "<audio>", "one '<audio>'"),
    ("<|im_start|>user\n<audio><|im_end|>\n", "no '<|im_end|>' before"),
    (None, "one '<audio>'"),
])
def test_templates_the_reference_cannot_split_are_one_line_errors(template, words):
    with pytest.raises(EdgevoiceError, match=words) as err:
        parse_chat_template(template)
    assert "\n" not in str(err.value)


def test_end_of_turn_id_is_the_tokenizers_and_must_agree_with_train_yaml():
    """models/audioLLM.py ``AudioLLM.__init__``: ``tokenizer('<|im_end|>')['input_ids'][0]``."""
    vocab = {"<|im_end|>": [42]}
    assert end_of_turn_id(lambda s: vocab[s], None) == 42
    assert end_of_turn_id(lambda s: vocab[s], 42) == 42
    with pytest.raises(EdgevoiceError, match="eod_id 41 but the tokenizer's '<\\|im_end\\|>' is 42") as err:
        end_of_turn_id(lambda s: vocab[s], 41)
    assert "\n" not in str(err.value)
    with pytest.raises(EdgevoiceError, match="splits '<\\|im_end\\|>' into 3 tokens"):
        end_of_turn_id(lambda s: [1, 2, 3], None)


@pytest.fixture(params=fixture_params())
def fixture_set(request):
    fixture = load_set(request.param)
    return fixture.root, yaml.safe_load((fixture.root / "checkpoints" / "audiollm" / "train.yaml").read_text())


def test_prompt_ids_follow_the_checkpoints_template(fixture_set):
    """models/audioLLM.py ``AudioLLM.__init__`` / ``recognize``: the turn prefix is eod_id + the
    tokenized text after the role, the response prefix the text after <audio>; a template with
    other text gives other ids."""
    root, train = fixture_set
    _, prompt = _prompt_ids(root / "llm", train)
    changed = copy.deepcopy(train)
    changed["model_conf"]["chat_template"] = train["model_conf"]["chat_template"].replace(
        "<|im_start|>user\n", "<|im_start|>user\nListen.\n").replace("assistant\n", "assistant\nSure\n")
    _, other = _prompt_ids(root / "llm", changed)
    assert other.eod_id == prompt.eod_id
    assert other.turn_prefix_ids[: len(prompt.turn_prefix_ids)] == prompt.turn_prefix_ids
    assert len(other.turn_prefix_ids) > len(prompt.turn_prefix_ids)
    assert other.response_prefix_ids[: len(prompt.response_prefix_ids)] == prompt.response_prefix_ids
    assert len(other.response_prefix_ids) > len(prompt.response_prefix_ids)


def test_a_train_yaml_eod_id_other_than_the_tokenizers_stops_the_export(fixture_set):
    root, train = fixture_set
    _, prompt = _prompt_ids(root / "llm", train)
    wrong = copy.deepcopy(train)
    wrong["dataset_conf"]["tokenize_conf"]["eod_id"] = prompt.eod_id - 1
    with pytest.raises(EdgevoiceError, match="use the tokenizer and train.yaml of one release"):
        _prompt_ids(root / "llm", wrong)
    unset = copy.deepcopy(train)
    del unset["dataset_conf"]["tokenize_conf"]["eod_id"]  # the reference never reads it
    assert _prompt_ids(root / "llm", unset)[1] == prompt
