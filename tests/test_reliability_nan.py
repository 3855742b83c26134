"""A broken model is refused, not explained as an empty segmentation with a blank heatmap.

* A module whose output on the slice is NaN (or Inf): explainers and ``segment`` raise a
  ValueError naming the segmenter, the CLI prints it as its one error line.
* A module that is fine on the slice but NaN on some perturbed inputs still runs.
* A TorchScript file with one byte flipped inside a stored member: torch would load it
  with different weights; it is refused, naming the file.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from napari_xaiclip.explain import explain
from napari_xaiclip.models import load_segmenter
from napari_xaiclip.models.generic import ModuleSegmenter

from bad_files import zip_member_offset

S = 32


class ConstantNet(nn.Module):
    """Logits ``value`` everywhere: NaN or Inf for a broken network."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), self.value)


class NanOnBatches(nn.Module):
    """A box-shaped positive segmentation for single images, NaN for batches of several."""

    def forward(self, x):
        out = torch.where(x[:, 1:2] > 0, 4.0, -4.0)  # the box channel
        return out if x.shape[0] == 1 else out * float("nan")


def _slice():
    return np.random.default_rng(0).normal(0, 1, (40, 48)).astype(np.float32)


def _seg(net, name="broken"):
    return ModuleSegmenter(net, name=name, device="cpu", input_size=S, box="channel")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_explaining_a_nan_model_is_refused(value):
    with pytest.raises(ValueError) as info:
        explain("occlusion", _seg(ConstantNet(value)), _slice(), box=(5, 5, 30, 30))
    message = str(info.value)
    assert message.startswith("the segmenter broken returned NaN/Inf for this slice")
    assert "its weights or input are broken" in message


def test_segment_of_a_nan_model_is_refused():
    with pytest.raises(ValueError, match="returned NaN/Inf for this slice"):
        _seg(ConstantNet(float("nan"))).segment(_slice(), box=(5, 5, 30, 30))


def test_nan_on_perturbed_batches_alone_is_left_to_the_explainer():
    seg = _seg(NanOnBatches(), name="fine-on-the-slice")
    result = explain("occlusion", seg, _slice(), box=(5, 5, 30, 30), batch_size=4)
    assert result.baseline_mask.any()  # the unperturbed slice was segmented
    probs = seg.segment(_slice(), box=(5, 5, 30, 30))
    assert np.all(np.isfinite(probs)) and probs.max() > 0.5


def test_finite_models_are_unchanged():
    seg = _seg(ConstantNet(3.0), name="fine")
    np.testing.assert_allclose(seg.segment(_slice(), box=(5, 5, 30, 30)), 1 / (1 + np.exp(-3.0)), rtol=1e-6)


def nan_cli_segmenter():
    """``--model module:test_reliability_nan:nan_cli_segmenter``."""
    return ConstantNet(float("nan")), {"input_size": S, "box": "channel"}


def test_cli_prints_one_error_line(tmp_path, capsys):
    import nibabel as nib

    from napari_xaiclip.cli import main

    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 1, (40, 48, 3)).astype(np.float32), np.eye(4)), ct)
    out = tmp_path / "out"
    code = main(["explain", str(ct), "--slice", "1", "--box", "5", "5", "30", "30", "--roi", "none",
                 "--mode", "traditional", "--model", "module:test_reliability_nan:nan_cli_segmenter",
                 "--no-curves", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "returned NaN/Inf for this slice" in err[0], err


# --- a TorchScript file with a flipped byte ------------------------------------------------
def _torchscript(path):
    net = nn.Conv2d(2, 1, 3, padding=1)
    with torch.no_grad():
        net.weight.copy_(torch.linspace(-1, 1, net.weight.numel()).reshape(net.weight.shape))
        net.bias.fill_(0.25)
    config = {"xaiclip.json": '{"input_size": 32, "box": "channel"}'}
    torch.jit.save(torch.jit.script(net), str(path), _extra_files=config)
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_with_a_flipped_weight_byte_is_refused(tmp_path):
    good = _torchscript(tmp_path / "good.pt")
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        weights = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 0]
    assert weights and all(i.compress_type == zipfile.ZIP_STORED for i in weights)
    member = weights[0]
    raw[zip_member_offset(bytes(raw), member) + 1] ^= 0x40
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    with zipfile.ZipFile(bad) as archive:
        assert archive.testzip() == member.filename  # the flip is a CRC error, as an independent check says
    with pytest.raises(ValueError) as info:
        load_segmenter(f"torchscript:{bad}", cache=False)
    message = str(info.value)
    assert message.startswith(f"TorchScript model {bad} is corrupted") and member.filename in message
    assert load_segmenter(f"torchscript:{good}", cache=False).input_size == 32  # the intact file loads
