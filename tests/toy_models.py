"""Tiny models with known answers for the explainer and metric tests.

Every network here maps (B, C, S, S) model inputs to (B, 1, S, S) mask logits,
is built from a local ``torch.Generator`` (the global RNG is never touched), and
counts the images it sees so tests can check ``Explanation.n_forward``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_xaiclip.explain.targets import Target
from napari_xaiclip.models.generic import ModuleSegmenter

__all__ = [
    "Counting",
    "GlobalLinearNet",
    "IdentityProbNet",
    "LinearProbTarget",
    "LocalRegionNet",
    "StructuredNet",
    "TinyConvNet",
    "box_channel",
    "make_segmenter",
    "soft_dice",
]


class Counting(nn.Module):
    """Wraps a network and counts the images (batch items) and calls it sees."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.images = 0
        self.calls = 0

    def forward(self, x):
        self.images += int(x.shape[0])
        self.calls += 1
        return self.inner(x)

    def reset(self):
        self.images = 0
        self.calls = 0


def _randn(gen: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


class TinyConvNet(nn.Module):
    """conv3x3 -> tanh -> conv3x3, seeded weights; ``conv1``/``conv2`` for Grad-CAM."""

    def __init__(self, in_channels: int = 2, hidden: int = 4, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight.copy_(_randn(gen, *self.conv1.weight.shape, scale=0.6))
            self.conv1.bias.copy_(_randn(gen, hidden, scale=0.1))
            self.conv2.weight.copy_(_randn(gen, *self.conv2.weight.shape, scale=0.6))
            self.conv2.bias.fill_(0.2)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


class GlobalLinearNet(nn.Module):
    """Logits = bias map + gain * (mean(W * x) - offset): every pixel with W > 0 matters.

    With a strictly positive input and W, occluding any window lowers every
    probability, so every window's attribution (target "roi-prob") is > 0.
    """

    def __init__(self, size: int, seed: int = 0, gain: float = 10.0, offset: float = 0.6):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(0.5 + torch.rand(size, size, generator=gen))
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        c = (size - 1) / 2
        disc = ((yy - c) ** 2 + (xx - c) ** 2 <= (size / 4) ** 2).float()
        self.register_buffer("bias_map", 4.0 * disc - 2.0)
        self.gain, self.offset = gain, offset

    def forward(self, x):
        s = (x[:, 0] * self.w).mean((-2, -1))
        return (self.bias_map[None] + self.gain * (s[:, None, None] - self.offset))[:, None]


class LocalRegionNet(nn.Module):
    """Logits depend on one small square region of the input only.

    logit(y, x) = disc(y, x) * 4 - 2 + gain * (sum of input in the region - offset)
    """

    def __init__(self, size: int, region=(20, 24, 8, 12), gain: float = 1.0, offset: float = 0.0):
        super().__init__()
        y0, y1, x0, x1 = region
        w = torch.zeros(size, size)
        w[y0:y1, x0:x1] = 1.0
        self.w = nn.Parameter(w)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        c = (size - 1) / 2
        disc = ((yy - c) ** 2 + (xx - c) ** 2 <= (size / 4) ** 2).float()
        self.register_buffer("bias_map", 4.0 * disc - 2.0)
        self.gain, self.offset = gain, offset

    def forward(self, x):
        s = (x[:, 0] * self.w).sum((-2, -1))
        return (self.bias_map[None] + self.gain * (s[:, None, None] - self.offset))[:, None]


class StructuredNet(nn.Module):
    """Logits = bias map + gain * sum(W * x) with W a Gaussian blob: importance is the blob."""

    def __init__(self, size: int, centre=(10, 22), sigma: float = 3.0, gain: float = 0.5):
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        blob = torch.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma ** 2))
        self.w = nn.Parameter(blob)
        c = (size - 1) / 2
        disc = ((yy - c) ** 2 + (xx - c) ** 2 <= (size / 4) ** 2).float()
        self.register_buffer("bias_map", 4.0 * disc - 2.0)
        self.gain = gain

    def forward(self, x):
        s = (x[:, 0] * self.w).sum((-2, -1))
        return (self.bias_map[None] + self.gain * (s[:, None, None] - 4.0))[:, None]


class IdentityProbNet(nn.Module):
    """Returns logit(clamp(x)) so that the segmenter's probabilities equal the input."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dummy = nn.Parameter(torch.zeros(()))  # so randomisation has something to touch

    def forward(self, x):
        p = x[:, :1].clamp(self.eps, 1 - self.eps)
        return torch.log(p) - torch.log1p(-p) + 0.0 * self.dummy


class ThreeChannelNet(nn.Module):
    """A conv net that takes 3 input channels: a user model the default config does not fit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class FiveD(nn.Module):
    """Returns a 5D tensor: not mask logits."""

    def forward(self, x):
        return x[:, :1, None]


class LinearProbTarget(Target):
    """f(probs) = sum(W * probs) for a known weight image W (S, S)."""

    name = "linear"
    differentiable = True
    uses_logits = False

    def __init__(self, weights):
        self.w = torch.as_tensor(np.asarray(weights, np.float32))

    def __call__(self, probs):
        return (probs * self.w.to(probs.device)).sum((-2, -1))


def make_segmenter(net: nn.Module, size: int, box: str = "ignore", normalize: str = "none",
                   counting: bool = True) -> ModuleSegmenter:
    """A CPU ``ModuleSegmenter`` around ``net`` (wrapped in :class:`Counting` by default)."""
    module = Counting(net) if counting else net
    return ModuleSegmenter(module, name="toy", device="cpu", input_size=size, in_channels=1, box=box,
                           normalize=normalize)


def box_channel(box, size: int) -> torch.Tensor:
    """(1, 1, S, S) binary box mask, the extra input channel of a box="channel" segmenter."""
    x0, y0, x1, y1 = np.clip(np.round(np.asarray(box, float)), 0, size).astype(int)
    m = torch.zeros(1, 1, size, size)
    m[..., y0:y1, x0:x1] = 1.0
    return m


def soft_dice(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(2 |p m| + 1) / (|p| + |m| + 1) per batch item, written independently of the package."""
    m = mask.float()
    return (2 * (probs * m).sum((-2, -1)) + 1.0) / (probs.sum((-2, -1)) + m.sum() + 1.0)
