"""Component analysis (the PdCR paper's network-level view) for SAM-family segmenters.

Each component's output is ablated in turn with a forward hook, and the
average treatment effect on the segmentation is reported:
``ATE = target_ablated - target_base`` (target: Dice against the baseline mask
by default; negative = the component supports the segmentation).

Components (module names inside ``segmenter.module``, a ``segment_anything.Sam``):

* ``image_encoder.blocks.{i}.attn`` (SAM's ViT; ``image_encoder.layers.{k}.blocks.{i}.attn``
  in LiteMedSAM's TinyViT) - each encoder block's attention output
  (the residual branch: ablating it keeps the block's shortcut), kind
  "encoder attention";
* ``mask_decoder.transformer.layers.{i}``, ``mask_decoder.transformer.final_attn_token_to_image``
  and ``mask_decoder.output_upscaling``, kind "decoder layer".

Ablation modes: ``"zero"`` replaces the output by zeros; ``"mean"`` by its mean
output over a set of filler slices (computed in one batched forward with the
same prompt). Hooks are always removed, errors included.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from .base import Progress, run_to_end

__all__ = ["ablate", "component_effects", "iter_component_effects", "component_kind", "component_names", "component_table",
           "save_component_chart"]

def _sam(segmenter):
    net = getattr(segmenter, "module", None)
    if net is None or not all(hasattr(net, a) for a in ("image_encoder", "mask_decoder")):
        raise ValueError(f"component analysis needs a SAM-family segmenter (a segment_anything Sam), "
                         f"got {type(segmenter).__name__} with network {type(net).__name__}")
    return net


def component_names(segmenter) -> list[str]:
    """Module names of the components, in execution order (encoder blocks first).

    Raises
    ------
    ValueError
        The segmenter is not SAM-family.
    """
    net = _sam(segmenter)
    # every attention module of the encoder, in registration (= execution) order: SAM's ViT has
    # blocks.{i}.attn, LiteMedSAM's TinyViT layers.{k}.blocks.{i}.attn
    names = [f"image_encoder.{n}" for n, _ in net.image_encoder.named_modules() if n.endswith(".attn")]
    names += [f"mask_decoder.transformer.layers.{i}" for i in range(len(net.mask_decoder.transformer.layers))]
    names += ["mask_decoder.transformer.final_attn_token_to_image", "mask_decoder.output_upscaling"]
    return names


def component_kind(name: str) -> str:
    """ "encoder attention" for image-encoder components, else "decoder layer"."""
    return "encoder attention" if name.startswith("image_encoder.") else "decoder layer"


def _map(out, fn):
    if isinstance(out, tuple):
        return tuple(_map(o, fn) for o in out)
    if isinstance(out, list):
        return [_map(o, fn) for o in out]
    return fn(out)


def _tile_like(out, rep):
    """``rep`` (leading dimension m) tiled to the shape of ``out`` (leading dimension B * m)."""
    if isinstance(out, (tuple, list)):
        return type(out)(_tile_like(o, r) for o, r in zip(out, rep))
    if out.shape[1:] != rep.shape[1:] or out.shape[0] % rep.shape[0]:
        raise ValueError(f"mean output of shape {tuple(rep.shape)} cannot replace {tuple(out.shape)}")
    return rep.to(out.dtype).repeat(out.shape[0] // rep.shape[0], *([1] * (out.ndim - 1)))


def _replace_hook(replacement):
    """A forward hook returning zeros (``replacement is None``) or the mean output, tiled to the batch."""

    def zero(mod, args, out):
        return _map(out, lambda t: t.new_zeros(t.shape))

    def mean(mod, args, out):
        return _tile_like(out, replacement)

    return zero if replacement is None else mean


@contextlib.contextmanager
def ablate(net, name: str, replacement=None):
    """Context manager: module ``name`` of ``net`` outputs zeros (``replacement=None``) or
    ``replacement`` (a tensor, or a tuple of tensors for tuple outputs, whose leading dimension
    divides the output's and is tiled to it). The hook runs before any other forward hook of the
    module and is removed on exit, errors included.

    Raises
    ------
    ValueError
        No module of that name.
    """
    try:
        module = net.get_submodule(name)
    except AttributeError:
        raise ValueError(f"no component {name!r} in {type(net).__name__}") from None
    handle = module.register_forward_hook(_replace_hook(replacement), prepend=True)
    try:
        yield module
    finally:
        handle.remove()


@contextlib.contextmanager
def _recording(net, names):
    """Record every output of the named modules (a list per name); hooks removed on exit."""
    seen = {n: [] for n in names}
    handles = []
    try:
        for n in names:
            handles.append(net.get_submodule(n).register_forward_hook(
                lambda mod, args, out, n=n: seen[n].append(_map(out, lambda t: t.detach().clone()))))
        yield seen
    finally:
        for h in handles:
            h.remove()


def _batch_mean(out, n: int):
    """Mean over ``n`` images of an output whose leading dimension is n * m (windowed attention)."""
    def one(t):
        return t.float().reshape(n, t.shape[0] // n, *t.shape[1:]).mean(0)

    return _map(out, one)


def iter_component_effects(segmenter, slice2d: np.ndarray, box=None, mode: str = "zero", filler_slices=None,
                           components=None, target: str = "dice", gt: np.ndarray | None = None):
    """ATE of ablating each component, one forward per component (generator of Progress; returns the records).

    Stopping the iteration cancels the analysis between components.

    Parameters
    ----------
    segmenter : a SAM-family segmenter (:class:`~napari_xaiclip.models.sam.SamSegmenter`).
    slice2d : (H, W) slice.
    box : (x0, y0, x1, y1) prompt in slice pixels. Default: no prompt.
    mode : "zero" or "mean" (mean output over ``filler_slices``). Default: "zero".
    filler_slices : 2D slices (a list or an (N, H, W) stack) for mode "mean".
    components : names to ablate. Default: :func:`component_names`.
    target : "dice", "soft-dice" or "roi-prob" (inside the baseline mask), or "gt-dice" with
        ``gt``. Default: "dice".
    gt : (H, W) ground-truth mask for target "gt-dice".

    Returns
    -------
    One record per component, in order: ``component``, ``kind``, ``mode``, ``target``,
    ``target_base``, ``target_ablated``, ``ate_dice`` (target_ablated - target_base, target
    units), ``ate`` (the same in percentage points, x100, as the causal map), and ``n_forward``
    (forward passes of the whole analysis: baseline, mean estimation, one per component).

    Raises
    ------
    ValueError
        Not a SAM-family segmenter, unknown mode, component or target, "mean" without filler
        slices, a ground truth of the wrong shape.
    """
    import torch

    from ..models.base import eval_mode
    from ..roi import roi_to_model
    from .targets import make_target

    net = _sam(segmenter)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    names = component_names(segmenter) if components is None else list(components)
    for n in names:
        try:
            net.get_submodule(n)
        except AttributeError:
            raise ValueError(f"no component {n!r} in {type(net).__name__}") from None
    if mode == "mean" and (filler_slices is None or len(filler_slices) == 0):
        raise ValueError("mode 'mean' needs filler_slices (other slices to average each component over)")
    sl = np.nan_to_num(np.asarray(slice2d, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if sl.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {sl.shape}")
    x, geometry = segmenter.preprocess(sl)
    prompt = segmenter.encode_prompt(box, geometry=geometry)
    n_forward = 0
    records = []
    total = len(names) + 1
    yield Progress(0, total, stage="baseline")

    def forward(images, hooks=contextlib.nullcontext()):
        # lock: no other run's pass sees this run's hooks; nothing held across a yield
        with segmenter.lock, hooks, eval_mode(net), torch.inference_mode():
            return segmenter.logits(images, prompt).float()

    base_logits = forward(x[None])
    n_forward += 1
    base_mask = torch.sigmoid(base_logits[0]) > 0.5
    gt_model = None
    if gt is not None:
        if np.shape(gt) != sl.shape:
            raise ValueError(f"ground truth of shape {np.shape(gt)} does not match the slice {sl.shape}")
        gt_model = torch.as_tensor(roi_to_model(np.asarray(gt, bool), segmenter.input_size,
                                                segmenter.keep_aspect), device=x.device)
    tgt = make_target(target, base_mask, None, gt_model)

    def score(logits):
        return float(tgt(logits if tgt.uses_logits else torch.sigmoid(logits))[0])

    base_score = score(base_logits)
    means = {}
    if mode == "mean":
        fills = torch.stack([segmenter.preprocess(np.nan_to_num(np.asarray(f, np.float32)))[0]
                             for f in filler_slices])
        with segmenter.lock, _recording(net, names) as seen:  # hooks in place only while the lock is held
            forward(fills)
        n_forward += len(fills)
        means = {n: _batch_mean(seen[n][0], len(fills)) for n in names}
    yield Progress(1, total, stage="components")
    for k, n in enumerate(names):
        value = score(forward(x[None], ablate(net, n, means.get(n))))
        n_forward += 1
        records.append({"component": n, "kind": component_kind(n), "mode": mode, "target": tgt.name,
                        "target_base": base_score, "target_ablated": value,
                        "ate_dice": value - base_score, "ate": 100.0 * (value - base_score)})
        yield Progress(k + 2, total, stage=n)
    for r in records:
        r["n_forward"] = n_forward
    return records


def component_effects(*args, **kwargs) -> list[dict]:
    """:func:`iter_component_effects` run to the end."""
    return run_to_end(iter_component_effects(*args, **kwargs))


def component_table(records: list[dict]) -> str:
    """A plain-text table of the records (component, kind, ATE in percentage points).

    >>> print(component_table([{"component": "a.b", "kind": "decoder layer", "ate": -12.5}]))
    component  kind           ATE (Dice pp)
    a.b        decoder layer         -12.50
    """
    rows = [("component", "kind", "ATE (Dice pp)")]
    rows += [(r["component"], r["kind"], f"{r['ate']:.2f}") for r in records]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows]
    lines[0] = lines[0].rstrip()
    return "\n".join(lines)


def save_component_chart(records: list[dict], path) -> None:
    """Horizontal bar chart (PNG) of each component's ATE in Dice percentage points, written
    atomically (no partial file on error). Negative bars (support) in blue, positive in red.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io import atomic_write_bytes

    if not records:
        raise ValueError("no component records to chart")
    names = [r["component"] for r in records]
    ates = [float(r["ate"]) for r in records]
    fig = Figure(figsize=(7, 0.35 * len(records) + 1.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    y = np.arange(len(records))
    ax.barh(y, ates, color=["tab:blue" if a < 0 else "tab:red" for a in ates])
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    mode = records[0].get("mode", "")
    ax.set_xlabel(f"ATE on {records[0].get('target', 'dice')} (percentage points), ablation: {mode}")
    ax.set_title("Component analysis (negative = the component supports the segmentation)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
