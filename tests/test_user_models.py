"""A user's own model that does not fit: one clear ValueError naming the model and what to set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xaiclip.explain import explain
from napari_xaiclip.models.generic import ModuleSegmenter

from toy_models import FiveD, ThreeChannelNet

SLICE = np.random.default_rng(0).normal(0, 1, (32, 32)).astype(np.float32)
BOX = (4, 4, 20, 20)


class Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("expected input[1, 2, 32, 32] to have 3 channels")


@pytest.mark.parametrize("net,config,message", [
    (ThreeChannelNet(), {"input_size": 32}, r"the model mine failed on an input of shape \(1, 1, 32, 32\).*in_channels"),
    (FiveD(), {"input_size": 32}, r"returned Tensor of shape \(1, 1, 1, 32, 32\); expected mask logits"),
    (Raises(), {"input_size": 32}, r"failed on an input .*to have 3 channels"),
])
def test_a_model_that_does_not_fit_is_one_clear_error(net, config, message):
    seg = ModuleSegmenter(net, name="mine", **config)
    with pytest.raises(ValueError, match=message):
        explain("occlusion", seg, SLICE, box=BOX, window=16, stride=16)


@pytest.mark.parametrize("config,message", [
    ({"in_channels": 0}, r"in_channels must be an integer from 1 to 16, got 0"),
    ({"input_size": -8}, r"input_size must be an integer from 8 to 4096, got -8"),
    ({"input_size": 100000}, r"input_size must be an integer from 8 to 4096"),
    ({"input_size": 0}, r"input_size must be an integer from 8 to 4096, got 0"),
])
def test_a_config_outside_its_range_is_refused_before_any_pass(config, message):
    with pytest.raises(ValueError, match=message):
        ModuleSegmenter(ThreeChannelNet(), name="mine", **config)


def test_a_torchscript_config_that_is_a_list_is_refused(tmp_path):
    from napari_xaiclip.models.generic import load_torchscript

    path = tmp_path / "m.pt"
    torch.jit.script(ThreeChannelNet()).save(str(path))
    (tmp_path / "m.pt.json").write_text("[256, 3]")
    with pytest.raises(ValueError, match=r"must be a JSON object"):
        load_torchscript(str(path))
