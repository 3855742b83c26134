"""The common pieces of every explainer: the result type, progress items and the
context (model input, prompt, baseline, ROI, target) built once per explanation.

Shapes: ``S`` is the segmenter's input side; heatmaps are computed at (S, S)
and mapped back to the slice's (H, W) at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..preprocess import InputGeometry, from_model_input
from ..roi import roi_to_model
from ..utils import to_plain
from .targets import Target, make_target

__all__ = ["Context", "Explanation", "Progress", "auto_batch_size", "run_to_end"]


@dataclass
class Progress:
    """One step of a running explanation.

    ``heatmap`` is the partial map at model resolution (S, S) or ``None``;
    :meth:`slice_heatmap` maps it to the slice.
    """

    done: int
    total: int
    heatmap: np.ndarray | None = None
    stage: str = ""
    geometry: InputGeometry | None = None

    def slice_heatmap(self) -> np.ndarray | None:
        if self.heatmap is None or self.geometry is None:
            return self.heatmap
        return from_model_input(self.heatmap, self.geometry)


@dataclass
class Explanation:
    """The result of an explainer.

    Attributes
    ----------
    heatmap : (H, W) float32, at the slice's resolution (zero outside the ROI in ROI mode).
    method, mode : e.g. "occlusion", "roi" | "traditional".
    params : every parameter with its value, defaults included.
    target : name of the explained target.
    n_forward : forward passes, the baseline's included.
    n_patch, n_patch_full, rho : evaluated perturbations, those of the whole image, their ratio
        (None for methods without a patch grid).
    seconds, gflops : wall time and GFLOPs spent (forward passes x GFLOPs per forward;
        a backward pass counts as two forwards).
    roi : (H, W) bool ROI used (None in traditional mode).
    baseline_probs : (H, W) float32 segmentation probabilities of the unperturbed slice.
    maps : extra named (H, W) maps (e.g. RISE "relevance", SegX "display").
    model_heatmap : (S, S) map at model resolution (for deletion/insertion metrics).
    info : method-specific extras (counts, histograms, warnings).
    """

    heatmap: np.ndarray
    method: str
    mode: str
    params: dict
    target: str
    n_forward: int
    seconds: float
    gflops: float
    n_patch: int | None = None
    n_patch_full: int | None = None
    rho: float | None = None
    roi: np.ndarray | None = None
    baseline_probs: np.ndarray | None = None
    maps: dict = field(default_factory=dict)
    model_heatmap: np.ndarray | None = None
    model: str = ""
    info: dict = field(default_factory=dict)

    @property
    def baseline_mask(self) -> np.ndarray | None:
        return None if self.baseline_probs is None else self.baseline_probs > 0.5

    def summary(self) -> dict:
        """Plain-value record for tables, layer metadata and JSON."""
        return {
            "method": self.method, "mode": self.mode, "target": self.target, "model": self.model,
            "n_forward": int(self.n_forward), "n_patch": self.n_patch, "n_patch_full": self.n_patch_full,
            "rho": None if self.rho is None else round(float(self.rho), 6),
            "seconds": round(float(self.seconds), 4), "gflops": round(float(self.gflops), 4),
            "params": to_plain(self.params, 64), "info": to_plain(self.info, 64),
        }


def auto_batch_size(input_size: int, device) -> int:
    """Perturbed inputs per forward: about 1 M pixels on the CPU, 4 M on a GPU, at least 1."""
    budget = (1 << 22) if getattr(device, "type", "cpu") == "cuda" else (1 << 20)
    return int(max(1, min(64, budget // (input_size * input_size))))


class Context:
    """Everything an explainer needs, computed once: model input, encoded prompt,
    baseline segmentation, ROI at model resolution, the target and its baseline score.

    ``score(images)`` runs one batched forward under ``torch.inference_mode`` and
    counts the passes.
    """

    def __init__(self, segmenter, slice2d: np.ndarray, box=None, points=None, point_labels=None,
                 roi: np.ndarray | None = None, target: str | Target = "dice", gt: np.ndarray | None = None,
                 score_map: np.ndarray | None = None, batch_size: int | str = "auto", seed: int = 0):
        segmenter.gflops  # counted once per model, before the clock starts: not part of any run's time
        self.t0 = time.perf_counter()
        self.seg = segmenter
        self.slice = _check_slice(slice2d)
        self.x, self.geometry = segmenter.preprocess(self.slice)
        self.device = self.x.device
        self.size = int(segmenter.input_size)
        box = _check_box(box, self.slice.shape)
        self.box = box
        self.prompt = segmenter.encode_prompt(box, points, point_labels, geometry=self.geometry)
        self.roi = _check_roi(roi, self.slice.shape)
        self.roi_model = None
        if self.roi is not None:
            self.roi_model = torch.as_tensor(roi_to_model(self.roi, self.size, segmenter.keep_aspect),
                                             device=self.device)
            if not bool(self.roi_model.any()):
                raise ValueError("the ROI vanishes at the model's input resolution; enlarge it")
        self.score_map = None
        if score_map is not None:
            from ..preprocess import to_model_input

            sm = np.nan_to_num(np.asarray(score_map, np.float32))
            if sm.shape != self.slice.shape:
                raise ValueError(f"score map of shape {sm.shape} does not match the slice {self.slice.shape}")
            self.score_map = torch.as_tensor(to_model_input(sm, self.size, segmenter.keep_aspect)[0],
                                             device=self.device)
        self.batch_size = auto_batch_size(self.size, self.device) if batch_size in (None, "auto") else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.seed = int(seed)
        self.n_forward = 0
        with torch.inference_mode():
            self.base_logits = segmenter.logits(self.x[None], self.prompt)[0].float()
        self.base_probs = torch.sigmoid(self.base_logits)
        self.base_mask = self.base_probs > 0.5
        self.n_forward += 1
        gt_model = None
        if gt is not None:
            gt = np.asarray(gt, bool)
            if gt.shape != self.slice.shape:
                raise ValueError(f"ground truth of shape {gt.shape} does not match the slice {self.slice.shape}")
            gt_model = torch.as_tensor(roi_to_model(gt, self.size, segmenter.keep_aspect), device=self.device)
        self.gt_model = gt_model
        self.target = make_target(target, self.base_mask, self.roi_model, gt_model)
        base_input = self.base_logits if self.target.uses_logits else self.base_probs
        self.base_score = float(self.target(base_input[None])[0])
        self.warnings = []
        if not bool(self.base_mask.any()):
            self.warnings.append("the baseline segmentation is empty: check the box prompt")

    @property
    def mode(self) -> str:
        return "traditional" if self.roi is None else "roi"

    def score(self, images: torch.Tensor, target=None) -> torch.Tensor:
        """Target scores (B,) of a batch of model inputs; one forward per image counted."""
        target = target or self.target
        with torch.inference_mode():
            logits = self.seg.logits(images, self.prompt).float()
            out = target(logits if target.uses_logits else torch.sigmoid(logits))
        self.n_forward += int(images.shape[0])
        return out

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            p = torch.sigmoid(self.seg.logits(images, self.prompt).float())
        self.n_forward += int(images.shape[0])
        return p

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed + offset)
        return g

    def to_slice(self, model_map: np.ndarray) -> np.ndarray:
        return from_model_input(np.asarray(model_map, np.float32), self.geometry)

    def progress(self, done: int, total: int, heatmap=None, stage: str = "") -> Progress:
        hm = None if heatmap is None else (heatmap.detach().float().cpu().numpy()
                                           if isinstance(heatmap, torch.Tensor) else heatmap)
        return Progress(done, total, hm, stage, self.geometry)


def _check_slice(slice2d) -> np.ndarray:
    a = np.asarray(slice2d)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"slice of shape {a.shape} is too small to explain")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"expected a numeric slice, got dtype {a.dtype}")
    return np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def _check_box(box, shape):
    if box is None:
        return None
    b = np.asarray(box, float).reshape(-1)
    if b.size != 4 or not np.all(np.isfinite(b)):
        raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box}")
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in b)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(f"box {(x0, y0, x1, y1)} lies outside the {h}x{w} slice")
    return np.array([max(0, x0), max(0, y0), min(w, x1), min(h, y1)])


def _check_roi(roi, shape):
    if roi is None:
        return None
    r = np.asarray(roi)
    if r.shape != tuple(shape):
        raise ValueError(f"ROI of shape {r.shape} does not match the slice {tuple(shape)}")
    r = r.astype(bool)
    if not r.any():
        raise ValueError("the ROI is empty: compute or draw an ROI first, or use traditional mode")
    return r


def finish(ctx: Context, method: str, params: dict, heatmap_model: torch.Tensor | np.ndarray,
           n_patch=None, n_patch_full=None, maps_model: dict | None = None,
           info: dict | None = None, backward_passes: int = 0, target_name: str | None = None) -> Explanation:
    """Map results to the slice and fill in the Explanation (cost, ROI, baseline)."""
    hm = heatmap_model.detach().float().cpu().numpy() if isinstance(heatmap_model, torch.Tensor) else heatmap_model
    hm = np.nan_to_num(np.asarray(hm, np.float32))
    if ctx.roi_model is not None:  # ROI-guided: no importance outside the ROI at either resolution
        hm = np.where(ctx.roi_model.cpu().numpy().astype(bool), hm, 0.0).astype(np.float32)
    heat = ctx.to_slice(hm)
    if ctx.roi is not None:
        heat = np.where(ctx.roi, heat, 0.0).astype(np.float32)
    maps = {}
    for k, v in (maps_model or {}).items():
        arr = v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float32)
        m = ctx.to_slice(np.nan_to_num(arr))
        maps[k] = np.where(ctx.roi, m, 0.0).astype(np.float32) if ctx.roi is not None else m
    rho = None if not n_patch_full else n_patch / n_patch_full
    gflops = float(ctx.seg.gflops) * (ctx.n_forward + 2 * backward_passes)
    info = dict(info or {})
    from ..models.speed import speed_report

    speed = speed_report(ctx.seg)
    if speed is not None:   # the forwards ran in this execution mode
        info["speed"] = speed.to_record()
    if ctx.warnings:
        info["warnings"] = list(ctx.warnings)
    return Explanation(
        heatmap=heat.astype(np.float32), method=method, mode=ctx.mode, params=params,
        target=target_name or ctx.target.name, n_forward=int(ctx.n_forward), seconds=time.perf_counter() - ctx.t0,
        gflops=gflops, n_patch=n_patch, n_patch_full=n_patch_full, rho=rho, roi=ctx.roi,
        baseline_probs=ctx.to_slice(ctx.base_probs.cpu().numpy()), maps=maps, model_heatmap=hm,
        model=getattr(ctx.seg, "name", ""), info=info,
    )


def run_to_end(gen):
    """Drive a generator of :class:`Progress` to its end and return its value (the one-call form
    of every ``iter_*`` function; stopping early is how the GUI cancels)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
