"""Synthetic abdominal CT/MR volumes with organ labels (FLARE22 numbering).

The phantom is drawn slice by slice from organ shapes whose centre, size,
rotation and outline (a low-order Fourier deformation of an ellipse) vary
smoothly along z and with the seed. Tissue values follow CT numbers (HU) or,
for ``modality="mr"``, T1-weighted-like intensities with a bias field. A
partial-volume blur and noise make it look acquired rather than drawn.

Used for tests, the demo and training the shipped demo models: seeds change
body habitus, organ positions, sizes, shapes and z extents, so models trained
on some seeds are evaluated on others.

Example
-------
>>> from napari_xaiclip.phantom import make_phantom
>>> vol, labels, names = make_phantom(shape=(8, 64, 64), seed=1)
>>> vol.data.shape, labels.shape, names[1]
((8, 64, 64), (8, 64, 64), 'liver')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .io import PHANTOM_MARKER, Volume
from .labels import FLARE22_NAMES

__all__ = ["ORGAN_NAMES", "make_phantom", "phantom_affine"]

#: FLARE22 label numbers of the organs the phantom draws (names from :data:`~napari_xaiclip.labels.FLARE22_NAMES`).
ORGAN_NAMES = {k: FLARE22_NAMES[k] for k in (1, 2, 3, 4, 5, 11, 13)}

FOV_MM = 360.0       # in-plane field of view
Z_EXTENT_MM = 240.0  # superior-inferior coverage

# Tissue values: CT in HU; MR as T1-weighted-like arbitrary units.
TISSUES = {
    #            CT      MR
    "air":     (-1000.0,   0.0),
    "fat":     (-100.0, 1000.0),
    "visceral": (-90.0,  950.0),
    "muscle":    (50.0,  350.0),
    "liver":     (60.0,  560.0),
    "spleen":    (45.0,  420.0),
    "kidney":    (30.0,  380.0),
    "medulla":   (20.0,  300.0),
    "pancreas":  (40.0,  620.0),
    "aorta":     (40.0,   80.0),
    "ivc":       (35.0,  120.0),
    "stomach":   (40.0,  400.0),
    "contents":  (10.0,  150.0),
    "bowel":     (30.0,  300.0),
    "cancellous": (300.0, 560.0),
    "cortical":  (700.0,   60.0),
    "csf":       (10.0,  150.0),
}


@dataclass
class _Blob:
    """An organ outline: an ellipse with a Fourier-deformed radius, varying along z."""

    cu: float          # centre, columns (-1 image left = patient right, +1 patient left)
    cv: float          # centre, rows (-1 anterior, +1 posterior)
    a: float           # semi-axis along u
    b: float           # semi-axis along v
    theta: float       # rotation (radians)
    tc: float          # z centre (0 inferior .. 1 superior)
    half: float        # half z extent
    drift_u: float     # centre drift per unit z
    drift_v: float
    eps: np.ndarray    # Fourier amplitudes k=2..4
    phase: np.ndarray  # Fourier phases
    twist: float       # phase change per unit z

    def scale_at(self, t: float) -> float:
        d = (t - self.tc) / self.half
        return float(np.sqrt(max(0.0, 1.0 - d * d)))

    def mask(self, U: np.ndarray, V: np.ndarray, t: float, grow: float = 1.0) -> np.ndarray:
        s = self.scale_at(t)
        if s < 0.2:
            return np.zeros(U.shape, bool)
        s = 0.35 + 0.65 * s  # organs taper but stay organ-sized until they end
        cu = self.cu + self.drift_u * (t - self.tc)
        cv = self.cv + self.drift_v * (t - self.tc)
        x, y = U - cu, V - cv
        c, sn = np.cos(self.theta), np.sin(self.theta)
        xr, yr = c * x + sn * y, -sn * x + c * y
        a, b = self.a * s * grow, self.b * s * grow
        rho = np.hypot(xr / a, yr / b)
        phi = np.arctan2(yr / b, xr / a)
        limit = np.ones_like(rho)
        for k, (e, p) in enumerate(zip(self.eps, self.phase), start=2):
            limit += e * np.cos(k * phi + p + self.twist * t)
        return rho <= limit


def _blob(rng, cu, cv, a, b, theta, tc, half, jitter=1.0) -> _Blob:
    j = jitter
    return _Blob(
        cu=cu + rng.normal(0, 0.03 * j), cv=cv + rng.normal(0, 0.03 * j),
        a=a * rng.uniform(0.85, 1.15), b=b * rng.uniform(0.85, 1.15),
        theta=theta + rng.normal(0, 0.2), tc=tc + rng.normal(0, 0.04 * j),
        half=half * rng.uniform(0.85, 1.15),
        drift_u=rng.normal(0, 0.08), drift_v=rng.normal(0, 0.08),
        eps=rng.uniform(0.02, 0.09, 3), phase=rng.uniform(0, 2 * np.pi, 3),
        twist=rng.normal(0, 1.5),
    )


class _Anatomy:
    """All random choices for one seed; draws any slice on demand."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.rng_seed = seed
        self.body_a = rng.uniform(0.78, 0.90)
        self.body_b = rng.uniform(0.56, 0.70)
        self.body_cv = rng.uniform(-0.02, 0.06)
        self.fat = rng.uniform(0.035, 0.09)
        self.wall = rng.uniform(0.03, 0.05)
        self.tilt = rng.normal(0, 0.05)
        self.shift = rng.normal(0, 0.025, 2)
        self.liver = _blob(rng, -0.36, -0.06, 0.36, 0.40, 0.35, 0.78, 0.45)
        self.liver_cut = _blob(rng, -0.02, 0.15, 0.16, 0.22, 0.0, 0.78, 0.5)  # medial notch
        self.spleen = _blob(rng, 0.52, 0.18, 0.12, 0.20, -0.5, 0.72, 0.25)
        self.kidney_r = _blob(rng, -0.32, 0.36, 0.10, 0.15, 0.45, 0.35, 0.22)
        self.kidney_l = _blob(rng, 0.33, 0.36, 0.10, 0.15, -0.45, 0.40, 0.22)
        self.stomach = _blob(rng, 0.28, -0.22, 0.20, 0.15, -0.3, 0.76, 0.22)
        self.air_level = rng.uniform(-0.45, 0.2)
        self.pancreas_t = (0.50 + rng.normal(0, 0.04), 0.12 * rng.uniform(0.85, 1.15))
        self.pancreas_pts = np.array([[-0.12, 0.12], [0.15, 0.02], [0.42, 0.10]]) + rng.normal(0, 0.03, (3, 2))
        self.pancreas_w = rng.uniform(0.045, 0.06)
        self.aorta = (0.05 + rng.normal(0, 0.015), 0.24 + rng.normal(0, 0.015), rng.uniform(0.038, 0.05))
        self.ivc = (-0.10 + rng.normal(0, 0.015), 0.22 + rng.normal(0, 0.015), rng.uniform(0.035, 0.05))
        self.vert = (rng.normal(0, 0.01), 0.47 + rng.normal(0, 0.015), rng.uniform(0.10, 0.12))
        n_bowel = rng.integers(5, 10)
        self.bowel = [_blob(rng, rng.uniform(-0.4, 0.4), rng.uniform(-0.35, 0.15), 0.08, 0.07,
                            rng.uniform(0, np.pi), rng.uniform(0.0, 0.5), rng.uniform(0.12, 0.3), 2.0)
                      for _ in range(n_bowel)]
        self.bowel_air = rng.uniform(0, 1, n_bowel) < 0.4
        self.ribs = rng.uniform(0.5, 0.65)  # ribs appear above this t

    def grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        c, s = np.cos(self.tilt), np.sin(self.tilt)
        u, v = u - self.shift[0], v - self.shift[1]
        return c * u + s * v, -s * u + c * v

    def draw(self, t: float, h: int, w: int) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
        """Tissue masks (painted in order) and organ label masks for slice height t."""
        U, V = self.grid(h, w)
        taper = 1.0 - 0.08 * (t - 0.5)
        body = np.hypot(U / (self.body_a * taper), (V - self.body_cv) / (self.body_b * taper)) <= 1
        inner_a, inner_b = self.body_a * taper - self.fat, self.body_b * taper - self.fat
        muscle = np.hypot(U / inner_a, (V - self.body_cv) / inner_b) <= 1
        cavity = np.hypot(U / (inner_a - self.wall), (V - self.body_cv) / (inner_b - self.wall)) <= 1
        tissues: dict[str, np.ndarray] = {"fat": body, "muscle": muscle, "visceral": cavity}

        bowel = np.zeros_like(body)
        bowel_air = np.zeros_like(body)
        for blob, has_air in zip(self.bowel, self.bowel_air):
            m = blob.mask(U, V, t) & cavity
            bowel |= m
            if has_air:
                bowel_air |= m & blob.mask(U, V, t, grow=0.45)
        tissues["bowel"] = bowel
        tissues["bowel_air"] = bowel_air

        liver = self.liver.mask(U, V, t) & ~self.liver_cut.mask(U, V, t) & cavity
        stomach = self.stomach.mask(U, V, t) & cavity
        lumen = self.stomach.mask(U, V, t, grow=0.72) & cavity
        spleen = self.spleen.mask(U, V, t) & cavity
        kid_r = self.kidney_r.mask(U, V, t) & cavity
        kid_l = self.kidney_l.mask(U, V, t) & cavity
        medulla = (self.kidney_r.mask(U, V, t, grow=0.5) | self.kidney_l.mask(U, V, t, grow=0.5)) & cavity
        pancreas = self._pancreas(U, V, t) & cavity
        aorta = self._disc(U, V, *self.aorta)
        ivc = self._disc(U, V, *self.ivc) & (t > 0.2)
        vu, vv, vr = self.vert
        vert = np.hypot((U - vu) / vr, (V - vv) / (vr * 0.85)) <= 1
        cancellous = np.hypot((U - vu) / (vr * 0.82), (V - vv) / (vr * 0.7)) <= 1
        canal = self._disc(U, V, vu, vv + vr * 1.25, vr * 0.38)
        arch = self._disc(U, V, vu, vv + vr * 1.25, vr * 0.75) & ~canal
        spinous = (np.abs(U - vu) < vr * 0.18) & (V > vv + vr * 1.6) & (V < vv + vr * 2.6) & muscle

        tissues.update({
            "liver": liver, "stomach": stomach, "contents": lumen & stomach,
            "stomach_air": lumen & stomach & (V < self.stomach.cv + self.air_level * self.stomach.b),
            "spleen": spleen, "kidney": kid_r | kid_l, "medulla": medulla & (kid_r | kid_l),
            "pancreas": pancreas, "ivc": ivc, "aorta": aorta,
            "cortical": vert | arch | spinous | self._ribs(U, V, t, inner_a - self.wall / 2,
                                                           inner_b - self.wall / 2, muscle, cavity),
            "cancellous": cancellous, "csf": canal,
        })
        labels = {1: liver, 11: stomach, 3: spleen, 2: kid_r, 13: kid_l, 4: pancreas, 5: aorta}
        return tissues, labels

    @staticmethod
    def _disc(U, V, cu, cv, r):
        return np.hypot(U - cu, V - cv) <= r

    def _pancreas(self, U, V, t):
        tc, half = self.pancreas_t
        d = (t - tc) / half
        if abs(d) >= 1:
            return np.zeros(U.shape, bool)
        p0, p1, p2 = self.pancreas_pts
        s = np.linspace(0, 1, 40)[:, None]
        curve = (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s ** 2 * p2 + np.array([0, 0.05 * d])
        width = self.pancreas_w * (1.0 - 0.4 * s[:, 0]) * np.sqrt(1 - d * d) ** 0.5
        out = np.zeros(U.shape, bool)
        for (cu, cv), r in zip(curve, width):
            out |= (U - cu) ** 2 + (V - cv) ** 2 <= r * r
        return out

    def _ribs(self, U, V, t, ring_a, ring_b, muscle, cavity):
        """Rib cross-sections on the muscle wall, in the upper abdomen only."""
        out = np.zeros(U.shape, bool)
        if t < self.ribs:
            return out
        for ang in np.deg2rad([-165, -140, -115, -65, -40, -15, 15, 165]):
            cu, cv = ring_a * np.cos(ang), self.body_cv + ring_b * np.sin(ang)
            out |= self._disc(U, V, cu, cv, 0.03)
        return out & muscle & ~cavity


PAINT_ORDER = ["fat", "muscle", "visceral", "bowel", "bowel_air", "liver", "stomach", "contents",
               "stomach_air", "spleen", "kidney", "medulla", "pancreas", "ivc", "aorta",
               "cortical", "cancellous", "csf"]
LABEL_ORDER = [1, 11, 3, 2, 13, 4, 5]


def phantom_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel (z, y, x) to RAS affine of a phantom: display axes I, P, L, centred at 0."""
    nz, ny, nx = shape
    dz, dy, dx = Z_EXTENT_MM / nz, FOV_MM / ny, FOV_MM / nx
    affine = np.zeros((4, 4))
    affine[2, 0] = -dz   # z -> inferior
    affine[1, 1] = -dy   # rows -> posterior
    affine[0, 2] = -dx   # columns -> patient left
    affine[3, 3] = 1.0
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape, float) - 1) / 2
    return affine


def make_phantom(shape: tuple[int, int, int] = (48, 256, 256), modality: str = "ct",
                 seed: int = 0, noise: float | None = None) -> tuple[Volume, np.ndarray, dict[int, str]]:
    """Make a synthetic abdominal volume with organ labels.

    Parameters
    ----------
    shape : (Z, Y, X) tuple of int
        Voxels; the volume covers 240 mm along z and 360 mm in-plane whatever
        the shape. Default: (48, 256, 256).
    modality : {"ct", "mr"}
        CT numbers in HU, or T1-weighted-like intensities. Default: "ct".
    seed : int
        Anatomy, shapes and noise; the same seed gives the same volume. Default: 0.
    noise : float, optional
        Noise standard deviation; default 15 HU (CT) or 20 (MR).

    Returns
    -------
    vol : Volume
        float32 (Z, Y, X) in display orientation with its RAS affine.
    labels : (Z, Y, X) uint8 ndarray
        FLARE22 numbering (1 liver, 2 right kidney, 3 spleen, 4 pancreas,
        5 aorta, 11 stomach, 13 left kidney), 0 elsewhere.
    names : dict
        Label number to organ name.

    Raises
    ------
    ValueError
        For a shape that is not 3 positive ints or an unknown modality.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {shape}")
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    column = 0 if modality == "ct" else 1
    nz, ny, nx = shape
    anatomy = _Anatomy(seed)
    air = TISSUES["air"][column]
    image = np.full(shape, air, np.float32)
    labels = np.zeros(shape, np.uint8)
    # t runs 0 (inferior) .. 1 (superior); array axis 0 runs the other way (display order)
    ts = np.linspace(1.0, 0.0, nz) if nz > 1 else np.array([0.6])
    for k, t in enumerate(ts):
        tissues, organ = anatomy.draw(float(t), ny, nx)
        for name in PAINT_ORDER:
            key = "air" if name.endswith("_air") else name
            image[k][tissues[name]] = TISSUES[key][column]
        for lab in LABEL_ORDER:
            labels[k][organ[lab]] = lab
    rng = np.random.default_rng(seed + 7919)
    image = ndimage.gaussian_filter(image, sigma=(0.5 if nz > 1 else 0, 0.8, 0.8))
    if modality == "mr":
        image *= _bias_field(shape, rng)
    sd = (15.0 if modality == "ct" else 20.0) if noise is None else float(noise)
    image += rng.normal(0.0, sd, shape).astype(np.float32)
    if modality == "mr":
        image = np.abs(image)  # magnitude images are non-negative (Rician-like floor)
    vol = Volume(image.astype(np.float32), phantom_affine(shape),
                 description=f"{PHANTOM_MARKER} {modality} seed {seed}")
    present = {lab: ORGAN_NAMES[lab] for lab in ORGAN_NAMES}
    return vol, labels, present


def _bias_field(shape, rng) -> np.ndarray:
    """A smooth multiplicative field of about +-15 %, like receive-coil shading."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                          indexing="ij")
    c = rng.normal(0, 0.08, 4)
    return (1.0 + c[0] * x + c[1] * y + c[2] * x * y + c[3] * z).astype(np.float32)
