"""PdCR causal effects of image blocks (docs/methods.md).

The model input is cut into non-overlapping square blocks (``window`` pixels,
8 at a 256 px input by default, scaled with the input side). Only blocks
*outside* the target region (the baseline segmentation) are candidates, and in
ROI mode only those that also intersect the ROI. A block is intervened on by
pasting a tile of the same size drawn from a **filler bank** (tiles of other
images), and the effect of the intervention is ``delta_k = target_k -
target_base`` (target: Dice against the baseline mask by default).

Screening keeps the cost down: each candidate is first filled with
``n_screen`` fillers; a block whose every ``|delta_k| < threshold_dice`` is skipped
(ATE 0). The others get ``n_samples`` fillers in all (the screening ones
reused) and ``ATE = mean_k(target_k - target_base)``; ``|ATE| < threshold_dice``
counts as 0. All forwards go through the shared engine in batches.

Sign and units: the heatmap is ``-ATE`` in Dice **percentage points** (x100),
the Dice lost when the block is replaced, so that, as for every method of this
package, **positive = the block supported the segmentation** (replacing it
lowered Dice) and negative = it hindered it. This is occlusion's sign
(``baseline - perturbed``); ``info`` keeps the ATE itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Context, finish
from .engine import perturb_and_score, window_sums
from .registry import MethodSpec, Param

__all__ = ["SPEC", "block_grid", "causal", "default_block"]


def default_block(size: int) -> int:
    """Block side for an input of ``size`` px: 8 at 256, scaled linearly, at least 1.

    >>> default_block(256), default_block(1024), default_block(64)
    (8, 32, 2)
    """
    return max(1, int(round(8 * size / 256)))


def block_grid(size: int, block: int) -> np.ndarray:
    """(N, 4) int blocks (y0, y1, x0, x1) tiling a size x size input, row-major; the last row/column
    is clipped when ``block`` does not divide ``size``.

    >>> block_grid(5, 3).tolist()
    [[0, 3, 0, 3], [0, 3, 3, 5], [3, 5, 0, 3], [3, 5, 3, 5]]
    """
    starts = np.arange(0, size, block)
    ys, xs = np.meshgrid(starts, starts, indexing="ij")
    y0, x0 = ys.ravel(), xs.ravel()
    return np.stack([y0, np.minimum(y0 + block, size), x0, np.minimum(x0 + block, size)], 1).astype(np.int64)


def _as_model_inputs(ctx: Context, items, what: str) -> list[torch.Tensor]:
    """A list of (C, S, S) model inputs from slices (any resolution, preprocessed like the explained
    slice) or ready model inputs ((C, S, S) each, or one (N, C, S, S) array)."""
    shape = tuple(ctx.x.shape)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 4:
        if tuple(items.shape[1:]) != shape:
            raise ValueError(f"{what} of shape {tuple(items.shape)} does not match the model input (N, {shape})")
        return [torch.as_tensor(items, dtype=ctx.x.dtype, device=ctx.device)[i] for i in range(len(items))]
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 2:
        items = [items]
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple, np.ndarray, torch.Tensor)):
        raise ValueError(f"{what} must be a list of 2D slices or an (N, H, W) stack, got {type(items).__name__} "
                         f"{items!r:.40}; the tool fills it from the volume's other slices")
    out = []
    for i, item in enumerate(items):
        a = item if isinstance(item, torch.Tensor) else np.asarray(item)
        if a.ndim == 3 and tuple(a.shape) == shape:
            out.append(torch.as_tensor(a, dtype=ctx.x.dtype, device=ctx.device))
        elif a.ndim == 2:
            sl = np.nan_to_num(np.asarray(a, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            out.append(ctx.seg.preprocess(sl)[0].to(dtype=ctx.x.dtype, device=ctx.device))
        else:
            raise ValueError(f"{what}[{i}] has shape {tuple(a.shape)}; expected a 2D slice or a {shape} model input")
    return out


def _bank(ctx: Context, filler_bank, bank_slices):
    """(images (N, C, S, S), forbidden (N, S, S) bool numpy or None, source)."""
    images = []
    if filler_bank is not None:
        images += _as_model_inputs(ctx, filler_bank, "filler_bank")
    if bank_slices is not None:
        images += _as_model_inputs(ctx, bank_slices, "bank_slices")
    if images:
        return torch.stack(images), None, "given"
    # no bank: the slice itself and its mirror images, tiles never overlapping the target region
    x, m = ctx.x, ctx.base_mask.cpu().numpy()
    flips = [(), (-1,), (-2,), (-2, -1)]
    imgs = torch.stack([x.flip(d) if d else x for d in flips])
    forbidden = np.stack([np.flip(m, tuple(a + 1 for a in d)) if d else m for d in flips])
    return imgs, forbidden, "self"


def _tile_pool(ctx: Context, images: torch.Tensor, forbidden, block: int, n: int, warnings: list) -> torch.Tensor:
    """(n, C, block, block) tiles at random positions of random bank images (seeded by the context)."""
    size = ctx.size
    rng = np.random.default_rng(ctx.seed)
    starts = np.arange(size - block + 1)
    ys, xs = np.meshgrid(starts, starts, indexing="ij")
    pos = np.stack([ys.ravel(), ys.ravel() + block, xs.ravel(), xs.ravel() + block], 1)
    valid = [np.arange(len(pos))] * len(images)
    if forbidden is not None:
        valid = [np.nonzero(window_sums(pos, f.astype(np.float64)) == 0)[0] for f in forbidden]
        if min(len(v) for v in valid) == 0:
            warnings.append("no filler tile fits outside the target region; tiles may overlap it")
            valid = [v if len(v) else np.arange(len(pos)) for v in valid]
    which = rng.integers(len(images), size=n)
    tiles = []
    for i in which:
        y0, _, x0, _ = pos[valid[i][rng.integers(len(valid[i]))]]
        tiles.append(images[i, :, y0:y0 + block, x0:x0 + block])
    return torch.stack(tiles)


def _paint(x: torch.Tensor, pool: torch.Tensor, origins: torch.Tensor, fillers: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S): ``x`` with block b (origin ``origins[b]``) replaced by tile ``pool[fillers[b]]``."""
    size, block = x.shape[-1], pool.shape[-1]
    ar = torch.arange(size, device=x.device)
    ry = ar[None] - origins[:, 0:1]
    rx = ar[None] - origins[:, 1:2]
    inside = (((ry >= 0) & (ry < block))[:, :, None] & ((rx >= 0) & (rx < block))[:, None, :])[:, None]
    tiles = pool[fillers[:, None, None], :, ry.clamp(0, block - 1)[:, :, None], rx.clamp(0, block - 1)[:, None, :]]
    return torch.where(inside, tiles.permute(0, 3, 1, 2), x[None])


def _block_map(values: np.ndarray, cand: np.ndarray, n_side: int, block: int, size: int) -> np.ndarray:
    grid = np.zeros(n_side * n_side, np.float32)
    grid[cand] = values
    grid = grid.reshape(n_side, n_side)
    return np.repeat(np.repeat(grid, block, 0), block, 1)[:size, :size]


def causal(ctx: Context, window: int | None = None, n_samples: int = 50, n_screen: int = 3,
           threshold_dice: float = 0.02, filler_bank=None, bank_slices=None):
    """PdCR causal ATE of blocks outside the target region (generator; returns an Explanation).

    Parameters
    ----------
    window : block side in model-input pixels. Default: ``round(8 * S / 256)``
        (8 at 256, 32 at 1024), at least 1.
    n_samples : fillers per block that passes screening (screening ones included). Default: 50.
    n_screen : fillers tried first; a block is skipped when every ``|delta|`` is below
        ``threshold_dice``. Default: 3.
    threshold_dice : in Dice units (0..1): screening cut and the ``|ATE|`` below which
        a block counts as 0. Default: 0.02.
    filler_bank : tiles come from these images: a list of 2D slices at any resolution
        (preprocessed like the explained slice) or model inputs, (N, C, S, S) or a list
        of (C, S, S). Default: None.
    bank_slices : more 2D slices (a list, or an (N, H, W) stack such as the other
        slices of the volume) added to the bank. Default: None.

    Without any bank, tiles come from the explained slice itself and its mirrored
    copies (left-right, up-down, both), at random positions that never overlap the
    target region; ``info["bank"]["source"]`` is then "self".

    The heatmap is ``-ATE`` in Dice percentage points: **positive = the block
    supported the segmentation**, the sign of every other method. ``n_patch`` is
    the number of candidate blocks evaluated, ``n_patch_full`` that of the whole
    image (traditional mode). ``info`` holds block counts by sign ("supporting",
    "hindering", "zero", "skipped"), a 10-bin histogram of the nonzero map values,
    ``n_screened`` and ``n_full_evaluated``.

    Raises
    ------
    ValueError
        window outside [1, S], n_screen above n_samples, a bank image of the wrong shape.
    """
    size = ctx.size
    block = default_block(size) if window is None else int(window)
    if not 1 <= block <= size:
        raise ValueError(f"window must be between 1 and the input size {size}, got {block}")
    n_fillers, n_screen = int(n_samples), int(n_screen)
    if not 1 <= n_screen <= n_fillers:
        raise ValueError(f"need 1 <= n_screen <= n_samples, got n_screen={n_screen}, n_samples={n_fillers}")
    threshold = float(threshold_dice)
    warnings: list[str] = []
    images, forbidden, source = _bank(ctx, filler_bank, bank_slices)
    params = {"window": block, "n_samples": n_fillers, "n_screen": n_screen, "threshold_dice": threshold,
              "filler_bank": None if filler_bank is None else f"{len(images)} images",
              "bank_slices": None if bank_slices is None else len(bank_slices)}
    pool = _tile_pool(ctx, images, forbidden, block, n_fillers, warnings)

    boxes = block_grid(size, block)
    n_side = math.ceil(size / block)
    outside = window_sums(boxes, ctx.base_mask.cpu().numpy().astype(np.float64)) == 0
    cand = np.nonzero(outside)[0]
    n_full = len(cand)
    if ctx.roi_model is not None:
        cand = cand[window_sums(boxes[cand], ctx.roi_model.cpu().numpy().astype(np.float64)) > 0]
    n_c = len(cand)
    origins = torch.as_tensor(boxes[cand][:, [0, 2]], device=ctx.device)
    sums, counts = np.zeros(n_c), np.zeros(n_c)
    max_abs = np.zeros(n_c)
    upper = n_c * n_fillers

    def partial():  # support = -ATE, in percentage points
        return _block_map(-100 * sums / np.maximum(counts, 1), cand, n_side, block, size)

    # stage 1: screening, items are (block, filler) block-major
    def build_screen(start, stop):
        idx = torch.arange(start, stop, device=ctx.device)
        return _paint(ctx.x, pool, origins[idx // n_screen], idx % n_screen)

    yield ctx.progress(0, upper, None, "causal screening")
    for start, stop, scores in perturb_and_score(ctx, n_c * n_screen, build_screen):
        d = scores.double().cpu().numpy() - ctx.base_score
        blk = np.arange(start, stop) // n_screen
        np.add.at(sums, blk, d)
        np.add.at(counts, blk, 1)
        np.maximum.at(max_abs, blk, np.abs(d))
        yield ctx.progress(stop, upper, partial(), "causal screening")

    # stage 2: the remaining fillers of the blocks that passed screening
    selected = np.nonzero(max_abs >= threshold)[0]
    m = n_fillers - n_screen
    sel_t = torch.as_tensor(selected, device=ctx.device)
    done0 = n_c * n_screen
    total = done0 + len(selected) * m

    def build_full(start, stop):
        idx = torch.arange(start, stop, device=ctx.device)
        return _paint(ctx.x, pool, origins[sel_t[idx // m]], n_screen + idx % m)

    if m and len(selected):
        for start, stop, scores in perturb_and_score(ctx, len(selected) * m, build_full):
            d = scores.double().cpu().numpy() - ctx.base_score
            blk = selected[np.arange(start, stop) // m]
            np.add.at(sums, blk, d)
            np.add.at(counts, blk, 1)
            yield ctx.progress(done0 + stop, total, partial(), "causal ATE")

    ate = np.zeros(n_c)
    ate[selected] = sums[selected] / n_fillers
    ate[np.abs(ate) < threshold] = 0.0
    support = -100.0 * ate  # Dice percentage points lost when the block is replaced
    nonzero = support[support != 0]
    counts_hist, edges = np.histogram(nonzero, bins=10) if len(nonzero) else (np.zeros(0, int), np.zeros(0))
    rows, cols = np.divmod(cand, n_side)
    info = {
        "blocks": {"supporting": int((support > 0).sum()), "hindering": int((support < 0).sum()),
                   "zero": int(len(selected) - len(nonzero)), "skipped": int(n_c - len(selected))},
        "histogram": {"counts": counts_hist.astype(int).tolist(), "edges": edges.round(6).tolist()},
        "n_screened": int(n_c), "n_full_evaluated": int(len(selected)),
        "grid": [n_side, n_side],
        "nonzero_blocks": ([[int(r), int(c), round(float(v), 6)] for r, c, v in zip(rows, cols, support) if v != 0]
                           if len(nonzero) <= 64 else None),
        "bank": {"source": source, "images": int(len(images)), "tiles": int(len(pool))},
        "units": "Dice percentage points lost when the block is replaced (-ATE); positive = the block "
                 "supported the segmentation",
        "ate_pp": "the heatmap negated",
    }
    if warnings:
        info["causal_warnings"] = warnings
    heat = _block_map(support, cand, n_side, block, size)
    yield ctx.progress(total, total, heat, "causal ATE")
    return finish(ctx, "causal", params, heat, n_patch=int(n_c), n_patch_full=int(n_full), info=info)


SPEC = MethodSpec(
    "causal", causal,
    (Param("window", int, None, "block side in model-input pixels; auto = 8 at a 256 px input", low=1, auto=True,
           aliases=("block",)),
     Param("n_samples", int, 50, "fillers per block that passes screening", low=1, high=100_000,
           aliases=("n_fillers",)),
     Param("n_screen", int, 3, "fillers tried first; at most n_samples", low=1, high=100_000),
     Param("threshold_dice", float, 0.02, "Dice change below which a block is skipped or counts as 0", low=0,
           high=1, aliases=("threshold",)),
     Param("filler_bank", object, None, "images the filler tiles come from", gui=False),
     Param("bank_slices", object, None, "more slices for the bank, e.g. the volume's others", gui=False)),
    summary="PdCR causal effect (-ATE) of blocks outside the segmentation, replaced by tiles of other images.",
    sign="positive = supports the segmentation (Dice percentage points lost when the block is replaced)",
    counts="blocks", cost="n_screen forward passes per candidate block, n_samples for those that pass",
    segx_base=False,
    segx_refusal="scores only blocks outside the segmentation, so SegX (explanation x mask) would be zero "
                 "everywhere")
