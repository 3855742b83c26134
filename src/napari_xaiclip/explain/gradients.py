"""Gradient explainers through Captum: integrated gradients smoothed as Captum's
NoiseTunnel (SmoothGrad) does it, one noise sample at a time so a run can be
cancelled between samples, and Grad-CAM on the image encoder.

Both need a differentiable target: soft Dice against the baseline mask (used
in place of the default Dice), the mean probability in the ROI, or the sum of
logits inside the baseline mask. ROI mode: the model sees the input outside
the ROI whatever it is fed (the integration baseline equals the input there and
the SmoothGrad noise is masked to the ROI), so the path and the noise only move
ROI pixels, and the map is zero outside the ROI at both resolutions.
"""

from __future__ import annotations

import torch

from .base import Context, finish
from .registry import MethodSpec, Param
from .targets import SoftDiceTarget

__all__ = ["SPECS", "gradcam", "integrated_gradients"]


def _differentiable_target(ctx: Context):
    """The context's target if differentiable; Dice (thresholded) is replaced by soft Dice."""
    if ctx.target.differentiable:
        return ctx.target
    if ctx.target.name == "dice":
        return SoftDiceTarget(ctx.base_mask)
    raise ValueError(f"gradient methods need a differentiable target (soft-dice, roi-prob or logit-sum), "
                     f"got {ctx.target.name!r}")


def _forward_fn(ctx: Context, target):
    def forward(images):
        logits = ctx.seg.logits(images, ctx.prompt).float()
        return target(logits if target.uses_logits else torch.sigmoid(logits))

    return forward


def _masked_forward(forward, roi: torch.Tensor, x: torch.Tensor):
    """``forward`` of the input with every pixel outside ``roi`` held at ``x``."""
    def masked(images):
        return forward(torch.where(roi, images, x))

    return masked


def _keep_roi(ctx: Context, heat: torch.Tensor) -> torch.Tensor:
    return heat if ctx.roi_model is None else torch.where(ctx.roi_model, heat, torch.zeros_like(heat))


def integrated_gradients(ctx: Context, n_steps: int = 32, n_samples: int = 8, stdevs: float = 0.1,
                         baseline: float = 0.0, internal_batch_size: int | None = None):
    """Integrated gradients, smoothed with NoiseTunnel (generator; returns an Explanation).

    Parameters
    ----------
    n_steps : Riemann steps along the path. Default: 32.
    n_samples : SmoothGrad noise samples (0 = plain integrated gradients). Default: 8.
    stdevs : noise standard deviation in the model's input units. Default: 0.1
        (a tenth of MedSAM's [0, 1] range).
    baseline : integration start value in model input space. Default: 0.
    internal_batch_size : Captum's; default: the context's batch size.

    The explained target is the call's ``target`` when differentiable
    (soft-dice, roi-prob, logit-sum); the default Dice is replaced by soft Dice.
    The map is the attribution summed over input channels. NoiseTunnel's noise
    comes from the call's ``seed``.
    """
    from captum.attr import IntegratedGradients

    tgt = _differentiable_target(ctx)
    nt_samples = int(n_samples)
    params = {"n_steps": int(n_steps), "n_samples": nt_samples, "stdevs": float(stdevs),
              "baseline": float(baseline)}
    x = ctx.x[None].clone()
    base = torch.full_like(x, float(baseline))
    forward = _forward_fn(ctx, tgt)
    roi = None if ctx.roi_model is None else ctx.roi_model[None, None]
    if roi is not None:
        # The model sees the input outside the ROI whatever Captum feeds it, so neither the
        # path nor the noise can move (or be credited to) pixels outside the ROI.
        base = torch.where(roi, base, x)
        forward = _masked_forward(forward, roi, x)
    ig = IntegratedGradients(forward)
    ibs = internal_batch_size or ctx.batch_size
    n = max(1, int(nt_samples))
    yield ctx.progress(0, n, None, "integrated gradients")
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    noise = None
    if nt_samples:  # drawn as Captum's NoiseTunnel draws it (seeded), so SmoothGrad results match it
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(ctx.seed)
            std = torch.tensor(float(stdevs), device=x.device).repeat((n,) + tuple(x.shape[1:]))
            noise = torch.normal(0, std)
        if roi is not None:
            noise = noise * roi
    total = torch.zeros_like(x)
    for i in range(n):  # one noise sample at a time: cancellable between samples
        xi = x if noise is None else x + noise[i:i + 1]
        with torch.enable_grad(), ctx.seg.lock:
            total += ig.attribute(xi, baselines=base, n_steps=int(n_steps), internal_batch_size=ibs).detach()
        yield ctx.progress(i + 1, n, _keep_roi(ctx, (total[0] / (i + 1)).sum(0)), "integrated gradients")
    attr = total / n
    passes = int(n_steps) * max(1, int(nt_samples))
    ctx.n_forward += passes
    heat = _keep_roi(ctx, attr[0].sum(0))  # the model-resolution map is what the curves rank
    return finish(ctx, "ig", params, heat, backward_passes=passes, target_name=tgt.name)


def gradcam(ctx: Context, layer: str | None = None, relu: bool = True):
    """Grad-CAM (Captum ``LayerGradCam``) on the segmenter's image encoder (generator).

    Parameters
    ----------
    layer : dotted module name inside the segmenter's network. Default: the
        image encoder's neck (SAM family) or the last convolution.
    relu : keep positive evidence only, as Grad-CAM does. Default: True.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    tgt = _differentiable_target(ctx)
    module = _gradcam_layer(ctx.seg.module, layer)
    params = {"layer": module[0], "relu": bool(relu)}
    yield ctx.progress(0, 1, None, "grad-cam")
    cam = LayerGradCam(_forward_fn(ctx, tgt), module[1])
    with torch.enable_grad(), ctx.seg.lock:  # Captum's hook sees only this run's pass
        attr = cam.attribute(ctx.x[None].clone(), relu_attributions=relu)
    if attr.ndim == 4 and attr.shape[-1] != attr.shape[-2] and attr.shape[1] == attr.shape[2]:
        attr = attr.permute(0, 3, 1, 2)  # channels-last encoders
    attr = attr.sum(1, keepdim=True) if attr.shape[1] != 1 else attr
    up = LayerAttribution.interpolate(attr, (ctx.size, ctx.size), interpolate_mode="bilinear")
    ctx.n_forward += 1
    heat = up[0, 0].detach()
    yield ctx.progress(1, 1, heat, "grad-cam")
    return finish(ctx, "gradcam", params, heat, backward_passes=1, target_name=tgt.name)


def _gradcam_layer(net, name: str | None):
    if name:
        try:
            return name, net.get_submodule(name)
        except AttributeError:
            raise ValueError(f"no layer {name!r} in the segmenter's network") from None
    for candidate in ("image_encoder.neck", "image_encoder"):
        try:
            return candidate, net.get_submodule(candidate)
        except AttributeError:
            continue
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a convolutional layer; name one with layer=...")
    return convs[-1]


SPEC = MethodSpec(
    "ig", integrated_gradients,
    (Param("n_steps", int, 32, "Riemann steps along the path", low=2, high=100_000),
     Param("n_samples", int, 8, "SmoothGrad noise samples; 0 = plain integrated gradients", low=0, high=100_000,
           aliases=("nt_samples",)),
     Param("stdevs", float, 0.1, "noise standard deviation in model input units", low=0),
     Param("baseline", float, 0.0, "integration start value in model input space"),
     Param("internal_batch_size", int, None, "Captum's; auto = the run's batch size", low=1, auto=True)),
    summary="integrated gradients (Captum) smoothed with SmoothGrad noise.",
    cost="n_steps x max(1, n_samples) forward and backward passes")

GRADCAM_SPEC = MethodSpec(
    "gradcam", gradcam,
    (Param("layer", str, None, "module name in the segmenter's network; auto = the image encoder's neck or "
           "the last convolution", auto=True, gui=False),
     Param("relu", bool, True, "keep positive evidence only")),
    summary="Grad-CAM (Captum) on the segmenter's image encoder.",
    sign="positive = supports the segmentation; with relu (the default) only supporting regions show",
    cost="one forward and one backward pass")

SPECS = (SPEC, GRADCAM_SPEC)
