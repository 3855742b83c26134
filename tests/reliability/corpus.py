"""The red-team corpus of the command line: one entry per bad input, what the user must see.

Every entry builds its argv in a fresh folder (writing the bad file it needs) from the shared
:class:`Inputs`; ``test_corpus.py`` runs it through ``napari_xaiclip.cli.main``.
Refusals exit 2 with one ``error:`` line holding ``fragment`` and leave the folder as it was;
batch rows that fail (``status`` 1) fail alone while the rows in ``done`` finish.
"""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from bad_files import zip_member_offset
from toy_models import FiveD, ThreeChannelNet

SEVERITIES = ("high", "medium", "low")
COMMANDS = ("explain", "components", "batch")

BOX = ["--box", "4", "4", "20", "20"]
#: Occlusion windows that fit the 32 px input of the corpus's own models.
SMALL_MODEL = ["--param", "occlusion.window=32", "--param", "occlusion.stride=32"]
#: Everything but the volume, the slice and --out of a cheap traditional run on the phantom model.
CHEAP = ["--roi", "none", "--mode", "traditional", "--no-curves"]
#: Cheap values for a method that is named with ``--method`` (so that nothing slow runs if a check is lost).
METHOD_PARAMS = {
    "occlusion": ["--param", "occlusion.window=64", "--param", "occlusion.stride=64"],
    "rise": ["--param", "rise.n_samples=4"],
    "ig": ["--param", "ig.n_steps=2"],
    "lime": ["--param", "lime.n_samples=8"],
    "causal": ["--param", "causal.window=64", "--param", "causal.n_samples=1", "--param", "causal.n_screen=1"],
}
#: Tiny SAM for checkpoints written by the corpus (the phantom model's own is 3.7 MB).
TINY_SAM = dict(image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                window_size=2, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_hidden=32)
BATCH_HEADER = "case,volume,box,slices,roi,modes,methods,model,curves,params"

SHAPE = (32, 32, 3)  # file order: 3 axial slices of 32 x 32 voxels
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
ORGAN = 1


def ct_array() -> np.ndarray:
    return np.random.default_rng(0).normal(40, 20, SHAPE).astype(np.float32)


def labels_array() -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[8:20, 10:22, :] = ORGAN
    return lab


def save_nifti(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, float)), str(path))
    return path


@dataclass(frozen=True)
class Inputs:
    """Files every case may read (never written to). ``scheduler``: a running Dask scheduler, for batch
    cases only."""

    ct: Path
    labels: Path
    scheduler: str | None = None


@dataclass(frozen=True)
class Entry:
    """One case of the corpus.

    ``build(folder, inputs)`` writes what the case needs into ``folder`` and returns the argv.
    ``fragment``: a piece of the one ``error:`` line (batch row failures: of the failed row's error).
    ``status``: the exit status promised (2 refused, 1 a batch with a failed row).
    ``silent``: before its fix the input gave a wrong result without any error.
    ``unprivileged``: run as an unprivileged user (root writes into read-only folders).
    ``done`` / ``failed``: batch rows that must finish / the row that must be reported failed.
    ``xfail``: why the case does not behave as promised yet (strict xfail).
    """

    id: str
    severity: str
    command: str
    build: Callable[[Path, Inputs], list[str]]
    fragment: str
    status: int = 2
    silent: bool = False
    unprivileged: bool = False
    done: tuple[str, ...] = ()
    failed: str = ""
    xfail: str = ""


# --- argv helpers --------------------------------------------------------------------------------
def explain(volume, out, *extra, slice_args=("--slice", "1"), box=True, model="phantom", method="occlusion",
            cheap=None):
    """``xaiclip explain`` of one slice, traditional, with ``cheap`` parameters (default: METHOD_PARAMS)."""
    cheap = METHOD_PARAMS[method] if cheap is None else cheap
    method_args = [] if method == "occlusion" else ["--method", method]
    return ["explain", str(volume), *slice_args, *(BOX if box else []), "--model", str(model), *CHEAP,
            *method_args, *cheap, *extra, "--out", str(out)]


def components(volume, out):
    return ["components", str(volume), "--slice", "1", *BOX, "--model", "phantom", "--out", str(out)]


def batch(manifest, out, inputs: Inputs):
    return ["batch", str(manifest), "--out", str(out), "--scheduler", inputs.scheduler, "--torch-threads", "1"]


def batch_row(case_id: str, volume) -> str:
    return (f"{case_id},{volume},4 4 20 20,1,none,traditional,occlusion,phantom,no,"
            "occlusion.window=64;occlusion.stride=64")


def write_manifest(folder: Path, *rows: str) -> Path:
    path = folder / "manifest.csv"
    path.write_text("\n".join([BATCH_HEADER, *rows]) + "\n")
    return path


def own_ct(folder: Path, inputs: Inputs) -> Path:
    """A copy of the CT in ``folder`` (readable where the shared one is not, e.g. by another user)."""
    return Path(shutil.copy(inputs.ct, folder / "ct.nii.gz"))


# --- bad volumes and labels ----------------------------------------------------------------------
def flipped_gzip(folder: Path, inputs: Inputs) -> Path:
    """The CT as a one-member .nii.gz with one bit flipped in the middle of its deflate data, at a place
    where the deflate stream still decodes, to other bytes: a reader that skips the CRC gets other voxels."""
    raw = nib.Nifti1Image(ct_array(), AFFINE).to_bytes()
    gz = gzip.compress(raw, mtime=0)
    start, stop = 10, len(gz) - 8  # fixed 10-byte header (no file name), 8-byte trailer
    for byte in range((start + stop) // 2, stop):
        bad = bytearray(gz)
        bad[byte] ^= 0x10
        try:
            decoded = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(bad[start:stop]))
        except zlib.error:
            continue
        if len(decoded) == len(raw) and decoded != raw:
            path = folder / "flipped.nii.gz"
            path.write_bytes(bytes(bad))
            return path
    raise AssertionError("no silent bit flip found")


def two_member_gzip(folder: Path) -> Path:
    raw = nib.Nifti1Image(ct_array(), AFFINE).to_bytes()
    cut = len(raw) // 3
    path = folder / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0))
    return path


def labels_argv(folder: Path, inputs: Inputs, labels: Path, organ=str(ORGAN)) -> list[str]:
    return explain(inputs.ct, folder / "out", "--labels", str(labels), "--organ", organ, box=False)


def moved_labels(folder, inputs):
    affine = AFFINE.copy()
    affine[0, 3] += 200.0
    return labels_argv(folder, inputs, save_nifti(folder / "moved.nii.gz", labels_array(), affine))


def fine_spacing_labels(folder, inputs):
    affine = AFFINE.copy()
    affine[0, 0] = affine[1, 1] = 0.5
    return labels_argv(folder, inputs, save_nifti(folder / "half_mm.nii.gz", labels_array(), affine))


def organ_zero(folder, inputs):
    return labels_argv(folder, inputs, inputs.labels, organ="0")


def float_labels(folder, inputs):
    data = labels_array().astype(np.float32) * 1.3
    return labels_argv(folder, inputs, save_nifti(folder / "float.nii.gz", data))


def probability_labels(folder, inputs):
    data = labels_array().astype(np.float32) * 0.75
    return labels_argv(folder, inputs, save_nifti(folder / "probability.nii.gz", data))


# --- models --------------------------------------------------------------------------------------
class NanNet(nn.Module):
    def forward(self, x):
        return x[:, :1] * float("nan")


class Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("this network is not ready")


class BoxNet(nn.Module):
    """Positive logits inside the box channel: a model that works, for the controls."""

    def forward(self, x):
        return x[:, 1:2] * 8.0 - 4.0


def torchscript(folder: Path, net: nn.Module, config, name="model.pt") -> Path:
    """``net`` scripted into ``folder/name``, its config beside it as ``name.json`` (None: no config)."""
    path = folder / name
    torch.jit.script(net).save(str(path))
    if config is not None:
        (folder / f"{name}.json").write_text(json.dumps(config))
    return path


def tiny_sam_checkpoint(folder: Path, name="sam.pt", nan=False, with_config=True) -> Path:
    """A checkpoint in the format of ``xaiclip train-segmenter``, of a tiny SAM (64 px input)."""
    from napari_xaiclip.models.sam import build_sam

    torch.manual_seed(0)
    state = build_sam(**TINY_SAM).state_dict()
    if nan:
        state["image_encoder.patch_embed.proj.weight"].fill_(float("nan"))
    obj = {"format": "xaiclip-sam/1", "mode": "medsam", "state_dict": state, "card": {"model": "tiny SAM"}}
    if with_config:
        obj["config"] = dict(TINY_SAM)
    path = folder / name
    torch.save(obj, path)
    return path


def flip_a_stored_byte(path: Path) -> Path:
    """One byte flipped inside the largest stored weight member: its CRC no longer matches."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename and i.compress_type == zipfile.ZIP_STORED]
    member = max(members, key=lambda i: i.file_size)
    raw[zip_member_offset(bytes(raw), member) + member.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    return path


def model_argv(folder: Path, inputs: Inputs, spec: str) -> list[str]:
    return explain(inputs.ct, folder / "out", model=spec, cheap=SMALL_MODEL)


def nan_torchscript(folder, inputs):
    path = torchscript(folder, NanNet(), {"input_size": 32, "box": "channel"})
    return model_argv(folder, inputs, f"torchscript:{path}")


def nan_sam(folder, inputs):
    return model_argv(folder, inputs, str(tiny_sam_checkpoint(folder, nan=True)))


def crc_torchscript(folder, inputs):
    path = flip_a_stored_byte(torchscript(folder, nn.Conv2d(2, 1, 3, padding=1), {"input_size": 32, "box": "channel"}))
    return model_argv(folder, inputs, f"torchscript:{path}")


def crc_sam(folder, inputs):
    return model_argv(folder, inputs, str(flip_a_stored_byte(tiny_sam_checkpoint(folder))))


def user_model(net_factory, config):
    def build(folder, inputs):
        return model_argv(folder, inputs, f"torchscript:{torchscript(folder, net_factory(), config)}")
    return build


def sam_without_config(folder, inputs):
    return model_argv(folder, inputs, str(tiny_sam_checkpoint(folder, with_config=False)))


# --- parameters and ranges -----------------------------------------------------------------------
def param(method: str, *items: str, cheap=None):
    """``--method METHOD`` with ``--param ITEM`` each (``cheap=[]`` when ITEM renames a cheap parameter)."""
    def build(folder, inputs):
        extra = [a for item in items for a in ("--param", item)]
        return explain(inputs.ct, folder / "out", *extra, method=method, cheap=cheap)
    return build


def flags(*extra: str, slice_args=("--slice", "1")):
    def build(folder, inputs):
        return explain(inputs.ct, folder / "out", *extra, slice_args=slice_args)
    return build


def box_nan(folder, inputs):
    argv = explain(inputs.ct, folder / "out")
    i = argv.index("--box")
    argv[i + 1] = "nan"
    return argv


def no_arguments(folder, inputs):
    return ["explain"]


def unknown_flag(folder, inputs):
    return explain(inputs.ct, folder / "out", "--organn", "liver")


# --- --out ---------------------------------------------------------------------------------------
def out_is_a_file(folder: Path) -> Path:
    out = folder / "taken"
    out.write_text("not a folder")
    return out


def out_under_a_file(folder: Path) -> Path:
    (folder / "file").write_text("x")
    return folder / "file" / "out"


def out_dangling_symlink(folder: Path) -> Path:
    out = folder / "link"
    out.symlink_to(folder / "nowhere")
    return out


def out_read_only(folder: Path) -> Path:
    out = folder / "locked"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    out.chmod(0o555)
    return out


def out_case(command: str, make_out):
    def build(folder, inputs):
        ct, out = own_ct(folder, inputs), make_out(folder)
        if command == "explain":
            return explain(ct, out)
        if command == "components":
            return components(ct, out)
        return batch(write_manifest(folder, batch_row("a", ct)), out, inputs)
    return build


# --- batch rows ----------------------------------------------------------------------------------
def long_case_id(folder, inputs):
    rows = [batch_row("a", inputs.ct), batch_row("x" * 300, inputs.ct)]
    return batch(write_manifest(folder, *rows), folder / "out", inputs)


def row_missing_a_field(folder, inputs):
    rows = [batch_row("a", inputs.ct), "b"]  # the case id alone: no volume
    return batch(write_manifest(folder, *rows), folder / "out", inputs)


# --- the table -----------------------------------------------------------------------------------
OUT_KINDS = [
    ("file", out_is_a_file, {"explain": "taken: File exists", "components": "taken: File exists",
                             "batch": "exists and is not a folder"}),
    ("under-file", out_under_a_file, {c: "Not a directory" for c in COMMANDS}),
    ("dangling-symlink", out_dangling_symlink, {c: "link: File exists" for c in COMMANDS}),
    ("read-only", out_read_only, {c: "Permission denied" for c in COMMANDS}),
]

CORPUS: list[Entry] = [
    # high: inputs that gave a wrong result without an error
    Entry("gzip-bit-flip", "high", "explain", lambda f, i: explain(flipped_gzip(f, i), f / "out"),
          "is a corrupted gzip file", silent=True),
    Entry("labels-moved-200mm", "high", "explain", moved_labels, "the labels lie on another grid than the image",
          silent=True),
    Entry("labels-half-mm-spacing", "high", "explain", fine_spacing_labels,
          "the labels lie on another grid than the image", silent=True),
    Entry("labels-organ-0", "high", "explain", organ_zero, "label 0 is the background", silent=True),
    Entry("labels-float", "high", "explain", float_labels, "is not a label volume: it has non-integer values",
          silent=True),
    Entry("labels-probability-map", "high", "explain", probability_labels,
          "(a probability map?), not integer labels; give --labels-threshold", silent=True),
    Entry("model-torchscript-nan", "high", "explain", nan_torchscript, "returned NaN/Inf for this slice", silent=True),
    Entry("model-sam-nan-weights", "high", "explain", nan_sam, "returned NaN/Inf for this slice", silent=True),
    Entry("model-torchscript-crc", "high", "explain", crc_torchscript, "fails its CRC check", silent=True),
    Entry("model-sam-crc", "high", "explain", crc_sam, "fails its CRC check", silent=True),
    # medium: typed parameters and ranges
    Entry("param-window-list", "medium", "explain", param("occlusion", "occlusion.patch=[8]", cheap=[]),
          "occlusion.window must be an integer, got [8]"),
    Entry("param-n-samples-text", "medium", "explain", param("rise", "rise.n_masks=abc", cheap=[]),
          "rise.n_samples must be an integer, got 'abc'"),
    Entry("param-n-samples-fraction", "medium", "explain", param("rise", "rise.n_masks=2.5", cheap=[]),
          "rise.n_samples must be an integer, got 2.5"),
    Entry("param-p1-nan", "medium", "explain", param("rise", "rise.p1=nan"),
          "rise.p1 must be a finite number"),
    Entry("param-ig-samples-text", "medium", "explain", param("ig", "ig.nt_samples=x"),
          "ig.n_samples must be an integer, got 'x'"),
    Entry("param-causal-bank-slices-int", "medium", "explain", param("causal", "causal.bank_slices=5"),
          "bank_slices must be a list of 2D slices"),
    Entry("param-rise-cells-huge", "medium", "explain", param("rise", "rise.cells=100000"),
          "rise.cells must be <= 256"),
    Entry("param-rise-grid-huge", "medium", "explain", param("rise", "rise.grid=100000"),
          "rise.cells must be <= 256"),
    Entry("slices-huge-range", "medium", "explain", flags(slice_args=("--slices", "0:1000000000000")),
          "more than 65536 slices"),
    Entry("roi-margin-huge", "medium", "explain", flags("--roi-margin", "1000000"),
          "ROI margin must be between 0 and 512"),
    # medium: --out that cannot be written, for every command that takes one
    *(Entry(f"{command}-out-{kind}", "medium", command, out_case(command, make), says[command],
            unprivileged=kind == "read-only")
      for kind, make, says in OUT_KINDS for command in COMMANDS),
    # medium: user models that do not fit
    Entry("model-wrong-channels", "medium", "explain", user_model(ThreeChannelNet, {"input_size": 32}),
          "set input_size and in_channels in its config"),
    Entry("model-in-channels-0", "medium", "explain", user_model(ThreeChannelNet, {"in_channels": 0}),
          "in_channels must be an integer from 1 to 16, got 0"),
    Entry("model-5d-output", "medium", "explain", user_model(FiveD, {"input_size": 32}),
          "expected mask logits (B, 1, H, W) or (B, H, W)"),
    Entry("model-forward-raises", "medium", "explain", user_model(Raises, {"input_size": 32}),
          "this network is not ready"),
    Entry("model-config-list", "medium", "explain", user_model(ThreeChannelNet, [256, 3]),
          "must be a JSON object"),
    *(Entry(f"model-input-size-{name}", "medium", "explain", user_model(ThreeChannelNet, {"input_size": size}),
            f"input_size must be an integer from 8 to 4096, got {size}")
      for name, size in (("0", 0), ("minus-8", -8), ("100000", 100000))),
    Entry("model-sam-without-config", "medium", "explain", sam_without_config, "the checkpoint has no config"),
    # medium: batch rows that fail alone
    Entry("batch-case-id-300-chars", "medium", "batch", long_case_id, "case id of 300 characters", status=1,
          done=("a",), failed="line3"),
    Entry("batch-row-without-volume", "medium", "batch", row_missing_a_field, "manifest.csv line 3: volume is empty",
          status=1, done=("a",), failed="line3"),
    # low
    Entry("argparse-no-arguments", "low", "explain", no_arguments, "the following arguments are required"),
    Entry("argparse-unknown-flag", "low", "explain", unknown_flag, "unrecognized arguments: --organn"),
    Entry("slices-negative", "low", "explain", flags(slice_args=("--slices", "-1:2")), "0 <= A < B"),
    Entry("param-kernel-width-0", "low", "explain", param("lime", "lime.kernel_width=0"),
          "lime.kernel_width must be >= 1e-06"),
    Entry("param-window-fraction", "low", "explain", param("occlusion", "occlusion.patch=8.7", cheap=[]),
          "occlusion.window must be an integer, got 8.7"),
    Entry("box-nan", "low", "explain", box_nan, "box must be 4 finite numbers"),
]
