"""Targets: the scalar an explainer explains, computed per perturbed input.

A target maps a batch of mask probabilities (B, S, S) (or logits, for
``uses_logits`` targets) to scores (B,). Attribution is the baseline score
minus the perturbed score, so a drop marks importance.

======================  =====================================================
``"dice"`` (default)    Dice of (probs > 0.5) against the baseline mask
``"soft-dice"``         soft Dice of probs against the baseline mask
``"roi-prob"``          mean foreground probability inside the ROI
``"gt-dice"``           Dice of (probs > 0.5) against a ground-truth mask
``"logit-sum"``         sum of logits inside the baseline mask (gradients)
======================  =====================================================
"""

from __future__ import annotations

import torch

__all__ = ["TARGETS", "Target", "make_target"]

TARGETS = ("dice", "soft-dice", "roi-prob", "gt-dice", "logit-sum")


class Target:
    """A scalar function of mask probabilities (or logits), one value per batch item."""

    name = "target"
    differentiable = False
    uses_logits = False

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _MaskTarget(Target):
    def __init__(self, mask: torch.Tensor):
        self.mask = mask.float()
        self.mask_sum = self.mask.sum()


class DiceTarget(_MaskTarget):
    """Hard Dice against a reference mask; 1.0 when both are empty."""

    name = "dice"

    def __call__(self, probs):
        pred = (probs > 0.5).float()
        inter = (pred * self.mask).sum((-2, -1))
        total = pred.sum((-2, -1)) + self.mask_sum
        return torch.where(total > 0, 2 * inter / total.clamp_min(1e-8), torch.ones_like(total))


class GroundTruthDiceTarget(DiceTarget):
    name = "gt-dice"


class SoftDiceTarget(_MaskTarget):
    """Soft Dice of probabilities against a reference mask (differentiable)."""

    name = "soft-dice"
    differentiable = True

    def __call__(self, probs):
        inter = (probs * self.mask).sum((-2, -1))
        return (2 * inter + 1.0) / (probs.sum((-2, -1)) + self.mask_sum + 1.0)


class RegionProbTarget(_MaskTarget):
    """Mean foreground probability inside a region (differentiable)."""

    name = "roi-prob"
    differentiable = True

    def __call__(self, probs):
        return (probs * self.mask).sum((-2, -1)) / self.mask_sum.clamp_min(1.0)


class LogitSumTarget(_MaskTarget):
    """Sum of mask logits inside the baseline mask (differentiable, for gradient methods)."""

    name = "logit-sum"
    differentiable = True
    uses_logits = True

    def __call__(self, logits):
        return (logits * self.mask).sum((-2, -1))


def make_target(name: str, base_mask: torch.Tensor, roi: torch.Tensor | None = None,
                gt: torch.Tensor | None = None) -> Target:
    """Build a target by name from model-resolution masks (bool tensors (S, S)).

    Raises
    ------
    ValueError
        Unknown name, or a target whose mask is missing (``gt-dice`` without a
        ground truth, ``roi-prob`` with an empty region).
    """
    if isinstance(name, Target):
        return name
    if name == "dice":
        return DiceTarget(base_mask)
    if name == "soft-dice":
        return SoftDiceTarget(base_mask)
    if name == "logit-sum":
        return LogitSumTarget(base_mask)
    if name == "gt-dice":
        if gt is None:
            raise ValueError("target 'gt-dice' needs a ground-truth mask (labels and organ)")
        return GroundTruthDiceTarget(gt)
    if name == "roi-prob":
        region = roi if roi is not None else base_mask
        if not bool(region.any()):
            raise ValueError("target 'roi-prob' needs a non-empty ROI (or baseline mask)")
        return RegionProbTarget(region)
    raise ValueError(f"unknown target {name!r}; choose from {TARGETS}")
