"""The two model protocols: segmenters and localizers.

A **segmenter** maps a batch of model-input images plus one prompt to mask
probabilities at input size; ``segment`` wraps preprocessing and resizing for
a single slice. A **localizer** maps (slice, text prompt) to a map in [0, 1].

Explainers only use the segmenter methods ``preprocess``, ``encode_prompt``,
``logits`` and ``predict``; anything that implements them plugs in.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..preprocess import InputGeometry, from_model_input, to_model_input

__all__ = [
    "Localizer",
    "Prompt",
    "PromptResolution",
    "Segmenter",
    "check_zip_archive",
    "count_gflops",
    "eval_mode",
    "pick_device",
]


def pick_device(device: str | None = "auto"):
    """``"auto"`` picks cuda, then mps, then cpu; anything else goes to ``torch.device``."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available")
    return dev


@contextlib.contextmanager
def eval_mode(*modules):
    """Put modules in eval mode and restore their training flags afterwards (MONAI style)."""
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, f in zip(modules, flags):
            m.train(f)


def count_gflops(fn, *args, **kwargs) -> float:
    """GFLOPs of one call of ``fn`` counted with ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import logging

    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)  # "triton not found" is moot here
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() / 1e9


def check_zip_archive(path, what: str) -> None:
    """Refuse a zip-format PyTorch file (TorchScript, ``torch.save``) with a member that fails its CRC.

    torch reads members by offset without checking their CRC32, so a flipped byte in
    the weights would otherwise load as silently different weights. Files in the
    legacy (non-zip) ``torch.save`` format are left to torch.
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # zipfile raises several types for damaged archives
        raise ValueError(f"{what} {path} is a corrupted zip archive ({type(exc).__name__}: {exc}); "
                         "copy or download it again") from None
    if bad is not None:
        raise ValueError(f"{what} {path} is corrupted: its member {bad!r} fails its CRC check; "
                         "copy or download it again")


#: Per thread, the model input :meth:`Segmenter.preprocess` made last (a weak reference).
_UNPERTURBED = threading.local()


def _is_unperturbed(images) -> bool:
    """Whether ``images`` is ``x[None]`` for the ``x`` that ``preprocess`` made last in this thread."""
    ref = getattr(_UNPERTURBED, "ref", None)
    x = ref() if ref is not None else None
    return (x is not None and hasattr(images, "data_ptr") and tuple(images.shape) == (1, *x.shape)
            and images.data_ptr() == x.data_ptr())


def _refuse_non_finite(segmenter, out) -> None:
    import torch

    bad = int((~torch.isfinite(out.detach())).sum())
    if bad:
        raise ValueError(f"the segmenter {segmenter.name} returned NaN/Inf for this slice ({bad} of {out.numel()} "
                         "outputs): its weights or input are broken; check or re-export the model, or choose another")


def _checked_logits(logits):
    """``logits`` that refuses NaN/Inf outputs for the unperturbed slice.

    Explainers hide NaN with ``nan_to_num``, which would turn a broken model into an empty
    segmentation and a blank heatmap; perturbed inputs are not checked (they are the
    explainer's business, and checking each batch would cost a device sync).
    """
    @functools.wraps(logits)
    def checked(self, images, *args, **kwargs):
        with self.lock:  # a hook another run put on the network (ablation, Grad-CAM) must not see this pass
            speed = self.__dict__.get("_speed")  # an execution mode set by models.speed.apply_speed
            if speed is None:
                out = logits(self, images, *args, **kwargs)
            else:
                out = speed(logits, self, images, *args, **kwargs)
        if _is_unperturbed(images):
            _refuse_non_finite(self, out)
        return out

    return checked


@dataclass
class Prompt:
    """A prompt in model-input pixels, plus whatever the model made of it (embeddings)."""

    box: np.ndarray | None = None            # (4,) x0, y0, x1, y1
    points: np.ndarray | None = None         # (N, 2) x, y
    point_labels: np.ndarray | None = None   # (N,) 1 foreground, 0 background
    encoded: Any = None                      # model-specific cache (e.g. SAM prompt embeddings)


class Segmenter:
    """Base class of segmenters. Subclasses implement :meth:`_encode` and :meth:`logits`.

    Attributes
    ----------
    name : str
        Spec it was loaded from, shown in layer metadata and reports.
    input_size : int
        Side of the square model input.
    in_channels : int
        Channels of the model input (3 for SAM family).
    keep_aspect : bool
        SAM style resize (longest side, pad) when True; MedSAM style stretch when False.
    module : torch.nn.Module
        The network (for randomisation checks, component analysis, Grad-CAM).
    """

    name: str = "segmenter"
    input_size: int = 256
    in_channels: int = 1
    keep_aspect: bool = False
    module: Any = None
    device: Any = None
    uses_box: bool = True
    description: str = ""

    @property
    def lock(self) -> threading.RLock:
        """Held for every forward pass, and by a run for the whole time it has hooks on :attr:`module`
        (component ablation, Grad-CAM, integrated gradients): one model object is shared by every
        widget and worker of the process, and a hook must only ever see its own run's passes."""
        return self.__dict__.setdefault("_lock", threading.RLock())

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "logits" in cls.__dict__:  # every implementation gets the NaN/Inf check
            cls.logits = _checked_logits(cls.__dict__["logits"])

    # --- to implement -------------------------------------------------
    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Model-input-sized 2D image (float32) to (C, S, S) model input values."""
        raise NotImplementedError

    def _encode(self, prompt: Prompt) -> Any:
        """Model-specific prompt embedding, computed once per prompt."""
        return None

    def logits(self, images, prompt: Prompt):
        """(B, C, S, S) model input -> (B, S, S) mask logits at input size; differentiable."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------
    def preprocess(self, slice2d: np.ndarray):
        """(H, W) slice -> ((C, S, S) float tensor on the device, InputGeometry)."""
        import torch

        slice2d = np.asarray(slice2d)
        if slice2d.ndim != 2:
            raise ValueError(f"expected a 2D slice, got shape {slice2d.shape}")
        resized, geometry = to_model_input(np.nan_to_num(slice2d.astype(np.float32)),
                                           self.input_size, keep_aspect=self.keep_aspect)
        x = torch.as_tensor(self.normalize_resized(resized, geometry), dtype=torch.float32, device=self.device)
        _UNPERTURBED.ref = weakref.ref(x)
        return x, geometry

    def normalize_resized(self, resized: np.ndarray, geometry: InputGeometry) -> np.ndarray:
        """Normalise a resized slice; padding (SAM style) stays at the model's zero."""
        h, w = geometry.resized
        out = np.zeros((self.in_channels, self.input_size, self.input_size), np.float32)
        out[:, :h, :w] = self.normalize(resized[:h, :w])
        return out

    def encode_prompt(self, box=None, points=None, point_labels=None,
                      geometry: InputGeometry | None = None) -> Prompt:
        """Build a :class:`Prompt` (in model pixels) and embed it once.

        ``box`` (x0, y0, x1, y1) and ``points`` (N, 2) as (x, y) are in slice
        pixels when ``geometry`` is given, else already in model pixels.
        """
        if box is not None:
            box = np.asarray(box, float).reshape(4)
            if geometry is not None:
                box = geometry.box_to_model(box)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box must have x1 > x0 and y1 > y0, got {tuple(np.round(box, 2))}")
        if points is not None:
            points = np.asarray(points, float).reshape(-1, 2)
            if geometry is not None:
                points = geometry.points_to_model(points)
            point_labels = (np.ones(len(points), int) if point_labels is None
                            else np.asarray(point_labels, int).reshape(-1))
            if len(point_labels) != len(points):
                raise ValueError(f"{len(points)} points but {len(point_labels)} point labels")
        prompt = Prompt(box, points, point_labels)
        prompt.encoded = self._encode(prompt)
        return prompt

    def as_prompt(self, prompt) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        return self.encode_prompt(box=prompt)

    def predict(self, images, prompt=None):
        """Mask probabilities (B, S, S) in [0, 1] for a batch of model inputs, without gradients."""
        import torch

        prompt = self.as_prompt(prompt)
        with torch.inference_mode():
            return torch.sigmoid(self.logits(images, prompt).float())

    def segment(self, slice2d: np.ndarray, box=None, points=None, point_labels=None) -> np.ndarray:
        """(H, W) float probabilities at the slice's resolution for a box and/or points in slice pixels.

        >>> from napari_xaiclip.models import load_segmenter  # doctest: +SKIP
        >>> probs = load_segmenter("default").segment(ct_slice, box=(40, 60, 120, 150))  # doctest: +SKIP
        """
        x, geometry = self.preprocess(slice2d)
        prompt = self.encode_prompt(box, points, point_labels, geometry=geometry)
        probs = self.predict(x[None], prompt)[0].cpu().numpy()
        return np.clip(from_model_input(probs, geometry), 0.0, 1.0)

    @property
    def gflops(self) -> float:
        """GFLOPs of one forward of one image with a box prompt (counted once, then cached)."""
        import torch

        if getattr(self, "_gflops", None) is None:
            s = self.input_size
            x = torch.zeros(1, self.in_channels, s, s, device=self.device)
            prompt = self.encode_prompt(box=(s * 0.25, s * 0.25, s * 0.75, s * 0.75))
            self._gflops = count_gflops(self.logits, x, prompt)
        return self._gflops

    def info(self) -> dict:
        n_params = sum(p.numel() for p in self.module.parameters()) if self.module is not None else 0
        return {"name": self.name, "input_size": self.input_size, "in_channels": self.in_channels,
                "parameters": int(n_params), "gflops": round(self.gflops, 4),
                "description": self.description}


@dataclass
class PromptResolution:
    """How a free-text prompt became one of a localizer's classes.

    ``match`` is "exact", "synonym", "words" (every word of the class is in the
    prompt), "similarity" (nearest class by text-embedding cosine ``similarity``),
    or "open" (open-vocabulary localizers take any text).
    """

    prompt: str
    resolved: str
    match: str
    similarity: float | None = None

    def describe(self) -> str:
        if self.match in ("exact", "open"):
            return f"prompt {self.prompt!r}"
        sim = f", text similarity {self.similarity:.2f}" if self.similarity is not None else ""
        return f"prompt {self.prompt!r} resolved to the localizer class {self.resolved!r} ({self.match}{sim})"

    def to_record(self) -> dict:
        return {"prompt": self.prompt, "prompt_class": self.resolved, "prompt_match": self.match,
                "prompt_similarity": None if self.similarity is None else round(float(self.similarity), 4)}


class Localizer:
    """Base class of region localizers: ``locate(slice2d, prompt)`` -> (H, W) map in [0, 1]."""

    name: str = "localizer"
    classes: tuple[str, ...] = ()
    description: str = ""
    card: dict | None = None   # model card (trained_on, licence, ...); set per instance, never shared

    def locate(self, slice2d: np.ndarray, prompt: str, allow_similar: bool = False) -> np.ndarray:
        raise NotImplementedError

    def resolve_prompt(self, prompt: str, allow_similar: bool = False) -> PromptResolution:
        """How ``prompt`` maps to a class (any text, for open-vocabulary localizers)."""
        if not prompt or not str(prompt).strip():
            raise ValueError("empty text prompt")
        return PromptResolution(str(prompt).strip(), str(prompt).strip(), "open")

    def resolve(self, prompt: str, allow_similar: bool = False) -> str:
        """The class a free-text prompt refers to."""
        return self.resolve_prompt(prompt, allow_similar).resolved
