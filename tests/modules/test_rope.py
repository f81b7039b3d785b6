"""Rotary frequencies stay float32 whatever the module is cast to."""

from __future__ import annotations

import pytest
import torch

from edgevoice.modules.rope import RotaryEmbedding


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_casting_the_module_keeps_float32_frequencies(dtype):
    rope = RotaryEmbedding(128, 1e6)
    reference = rope.inv_freq.clone()
    cast = rope.to(dtype)
    assert cast.inv_freq.dtype == torch.float32
    torch.testing.assert_close(cast.inv_freq, reference, rtol=0, atol=0)
    positions = torch.tensor([[0, 1, 4095]])
    cos, _ = cast(positions)
    expected, _ = RotaryEmbedding(128, 1e6)(positions)
    torch.testing.assert_close(cos, expected)  # fp16 frequencies would be off by whole radians here


def test_half_on_a_whole_model_reaches_the_rotary_buffer():
    model = torch.nn.Sequential(RotaryEmbedding(64, 1e4)).half()
    assert model[0].inv_freq.dtype == torch.float32
