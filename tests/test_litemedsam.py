"""LiteMedSAM, the default segmenter: checksum, recipe (pad, box scale, crop back), checkpoints,
batching, and a real CT slice. Tests that run the network are marked ``litemedsam``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xaiclip.models import load_segmenter
from napari_xaiclip.models import litemedsam as lm


@pytest.fixture(scope="module")
def seg():
    return load_segmenter("default", device="cpu")


def _real_ct():
    """The real CT slice pydicom ships (thoracic vertebra, 128 x 128), in HU."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _vertebra_reference(hu, box):
    """Bone inside the box (HU > 200), largest component, holes filled: no model involved."""
    from scipy import ndimage as ndi

    x0, y0, x1, y1 = box
    ref = np.zeros(hu.shape, bool)
    ref[y0:y1, x0:x1] = hu[y0:y1, x0:x1] > 200
    lab, n = ndi.label(ref)
    ref = lab == (1 + np.argmax(np.bincount(lab.ravel())[1:]))
    return ndi.binary_fill_holes(ref)


def test_default_is_litemedsam_with_its_card(seg):
    assert isinstance(seg, lm.LiteMedSamSegmenter)
    assert load_segmenter("litemedsam", device="cpu").module is not None
    assert seg.input_size == 256 and seg.keep_aspect and seg.in_channels == 3
    assert sum(p.numel() for p in seg.module.parameters()) == 9_791_300
    assert seg.card["phantom_trained"] is False
    assert "research" in seg.card["licence"] and "MedSAM" in seg.card["trained_on"]
    assert seg.card["sha256"] == lm.LITEMEDSAM_SHA256


def test_recipe_pads_and_scales_the_box_by_256_over_the_longest_side(seg):
    """A 100 x 200 slice: 256 / 200 = 1.28, so it fills rows 0..127 and the box scales by 1.28 exactly."""
    image = np.tile(np.linspace(-100.0, 300.0, 200, dtype=np.float32), (100, 1))
    x, geometry = seg.preprocess(image)
    assert tuple(x.shape) == (3, 256, 256)
    assert geometry.resized == (128, 256)
    x = x.numpy()
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    assert x[:, 128:].max() == 0.0                                   # padding below, not a stretch
    assert x[0, :128].min() == pytest.approx(0.0) and x[0, :128].max() == pytest.approx(1.0)
    assert x[0, 10, 0] < x[0, 10, 128] < x[0, 10, 255]               # the ramp survives, left to right
    prompt = seg.encode_prompt(box=(20, 10, 120, 60), geometry=geometry)
    np.testing.assert_allclose(prompt.box, [25.6, 12.8, 153.6, 76.8])


def test_recipe_crops_the_padding_and_resizes_the_mask_back(seg, monkeypatch):
    """A model-space block (rows 0..63, columns 128..255) is the slice's rows 0..49, columns 100..199."""
    def logits(images, prompt):
        out = torch.full((images.shape[0], 256, 256), -20.0)
        out[:, :64, 128:] = 20.0
        out[:, 128:, :] = 20.0   # inside the padding: must be cropped away
        return out

    monkeypatch.setattr(seg, "logits", logits)
    probs = seg.segment(np.random.default_rng(0).random((100, 200)), box=(10, 10, 190, 90))
    assert probs.shape == (100, 200)
    expected = np.zeros((100, 200), bool)
    expected[:50, 100:] = True
    assert np.array_equal(probs > 0.5, expected)


def test_checksum_mismatch_names_the_file_and_both_hashes(tmp_path, monkeypatch):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(b"\0" * lm.LITEMEDSAM_SIZE)
    with pytest.raises(ValueError) as err:
        lm.verify_bundled(fake)
    text = str(err.value)
    assert str(fake) in text and lm.LITEMEDSAM_SHA256 in text
    assert lm.sha256_of(fake) in text
    fake.write_bytes(b"short")
    with pytest.raises(ValueError, match="5 bytes.*39,370,479 bytes"):
        lm.verify_bundled(fake)
    monkeypatch.setattr(lm, "bundled_checkpoint", lambda: fake)
    with pytest.raises(ValueError, match="not the expected file"):
        load_segmenter("default", device="cpu", cache=False)


def test_bundled_checkpoint_passes_the_check():
    path = lm.bundled_checkpoint()
    lm.verify_bundled(path)
    assert path.stat().st_size == lm.LITEMEDSAM_SIZE


@pytest.mark.parametrize("wrap", ["plain", "model"])
def test_fine_tuned_checkpoints_load(seg, tmp_path, wrap):
    state = {k: v.clone() for k, v in seg.module.state_dict().items()}
    state["mask_decoder.iou_token.weight"] += 1.0   # "fine-tuned"
    path = tmp_path / "mine.pth"
    torch.save(state if wrap == "plain" else {"model": state, "epoch": 3}, path)
    mine = load_segmenter(f"litemedsam:{path}", device="cpu", cache=False)
    assert mine.name == f"litemedsam:{path}"
    assert torch.equal(mine.module.state_dict()["mask_decoder.iou_token.weight"],
                       state["mask_decoder.iou_token.weight"])
    assert "user checkpoint" in mine.card["source"]


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, path)
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_segmenter(f"litemedsam:{path}", device="cpu", cache=False)


def test_loading_prints_no_warnings_of_the_vendored_code():
    """A fresh interpreter with every warning shown: loading LiteMedSAM prints nothing."""
    import subprocess
    import sys

    code = "from napari_xaiclip.models import load_segmenter; load_segmenter('default', device='cpu')"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr


@pytest.mark.litemedsam
def test_batched_perturbations_with_one_box_match_one_by_one(seg):
    """The decoder gets the prompt expanded to the batch; each image's mask equals its own run."""
    rng = np.random.default_rng(1)
    x, geometry = seg.preprocess(np.clip(_real_ct(), -160, 240))
    prompt = seg.encode_prompt(box=(30, 2, 90, 58), geometry=geometry)
    batch = x[None].repeat(3, 1, 1, 1)
    batch[1, :, 40:80, 40:80] = 0.0
    batch[2] = batch[2] * torch.as_tensor(rng.random((256, 256)) > 0.3, dtype=torch.float32)
    together = seg.predict(batch, prompt)
    alone = torch.cat([seg.predict(b[None], prompt) for b in batch])
    assert torch.allclose(together, alone, atol=1e-4)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


@pytest.mark.litemedsam
def test_segments_a_real_ct_slice_with_a_box(seg):
    hu = _real_ct()
    box = (30, 2, 90, 58)  # around the vertebral body
    mask = seg.segment(np.clip(hu, -160, 240), box=box) > 0.5
    ref = _vertebra_reference(hu, box)
    dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
    box_only = np.zeros_like(ref)
    box_only[2:58, 30:90] = True
    trivial = 2 * (box_only & ref).sum() / (box_only.sum() + ref.sum())
    assert dice >= 0.85 > trivial + 0.1, (dice, trivial)
    assert not mask[:, :26].any() and not mask[62:].any()   # stays inside the box (+4 px)


@pytest.mark.litemedsam
def test_explainers_run_on_litemedsam(seg):
    """Occlusion (ROI-guided), Grad-CAM on the default layer (TinyViT's neck) and integrated gradients."""
    from napari_xaiclip.explain import explain

    image = np.clip(_real_ct(), -160, 240)
    box = (30, 2, 90, 58)
    roi = np.zeros(image.shape, bool)
    roi[0:64, 24:96] = True
    occ = explain("occlusion", seg, image, box=box, roi=roi, window=64, stride=64, batch_size=4)
    assert occ.mode == "roi" and 1 < occ.n_forward <= 17 and occ.heatmap.shape == image.shape
    assert np.abs(occ.heatmap[~roi]).max() == 0 and np.abs(occ.heatmap[roi]).max() > 0
    cam = explain("gradcam", seg, image, box=box)
    assert cam.params["layer"] == "image_encoder.neck" and np.isfinite(cam.heatmap).all()
    assert cam.heatmap.max() > 0
    ig = explain("ig", seg, image, box=box, n_steps=2, n_samples=1)
    assert np.isfinite(ig.heatmap).all() and np.abs(ig.heatmap).max() > 0
