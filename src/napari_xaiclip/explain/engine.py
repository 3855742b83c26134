"""The batched perturb-and-score engine every perturbation method shares.

A method describes its perturbations as a function ``build(start, stop)`` that
returns the perturbed model inputs (B, C, S, S) for items ``start..stop-1``,
made on the device from masks and fills; the engine runs one forward per
batch under ``torch.inference_mode`` and hands back the target scores.

Rectangular windows are built as outer products of row and column masks, so
a batch of B occlusions costs O(B S) index work plus one ``torch.where``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .base import Context

__all__ = ["box_masks", "fill_values", "paint_boxes", "perturb_and_score", "window_boxes"]


def perturb_and_score(ctx: Context, n_items: int, build: Callable[[int, int], torch.Tensor],
                      batch_size: int | None = None, target=None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, scores)`` for consecutive batches of perturbed inputs.

    ``scores`` (stop - start,) are target values (``ctx.target`` unless another
    ``target`` is given); the caller turns them into attributions
    (``ctx.base_score - scores``) and accumulates its map.
    """
    size = batch_size or ctx.batch_size
    for start in range(0, n_items, size):
        stop = min(n_items, start + size)
        yield start, stop, ctx.score(build(start, stop), target)


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Captum's sliding-window positions: ceil((size - window) / stride) + 1 starts, last window clipped."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    window = min(window, size)
    count = int(math.ceil((size - window) / stride)) + 1
    return np.arange(count) * stride


def window_boxes(size: int, window: int, stride: int) -> np.ndarray:
    """(N, 4) int windows (y0, y1, x0, x1) of a square grid over a size x size input, row-major."""
    starts = window_starts(size, window, stride)
    ys, xs = np.meshgrid(starts, starts, indexing="ij")
    y0, x0 = ys.ravel(), xs.ravel()
    return np.stack([y0, np.minimum(y0 + window, size), x0, np.minimum(x0 + window, size)], 1).astype(np.int64)


def box_masks(boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column masks (B, S) of boxes (B, 4) as (y0, y1, x0, x1); the box mask is their outer product."""
    ar = torch.arange(size, device=boxes.device)
    rows = (ar >= boxes[:, 0:1]) & (ar < boxes[:, 1:2])
    cols = (ar >= boxes[:, 2:3]) & (ar < boxes[:, 3:4])
    return rows, cols


def paint_boxes(x: torch.Tensor, fill: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S): ``x`` (C, S, S) with each box replaced by ``fill`` (C, S, S)."""
    mask = (rows[:, :, None] & cols[:, None, :])[:, None]
    return torch.where(mask, fill[None], x[None])


def outer_sum(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_b weights[b] * outer(rows[b], cols[b]) as an (S, S) map, via one matmul."""
    return (rows.T.to(weights.dtype) * weights) @ cols.to(weights.dtype)


def fill_values(ctx: Context, fill: str, blur_sigma: float | None = None) -> torch.Tensor:
    """The (C, S, S) replacement values: "zero" (0 in model input space), "mean", or "blur"."""
    x = ctx.x
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x).clone()
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = blur_sigma or max(1.0, ctx.size / 64)
        arr = x.detach().cpu().numpy()
        return torch.as_tensor(np.stack([gaussian_filter(c, sigma) for c in arr]), device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown fill {fill!r}; choose zero, mean or blur")


def window_sums(boxes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (S, S) inside each window, from an integral image."""
    ii = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    ii[1:, 1:] = values.cumsum(0).cumsum(1)
    y0, y1, x0, x1 = boxes.T
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
