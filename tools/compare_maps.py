"""Before/after check for refactors: every explainer, both modes, fixed inputs.

    python tools/compare_maps.py --save before.npz     # on the old code
    python tools/compare_maps.py --check before.npz    # on the new code: same maps?

Runs the phantom model on a fixed phantom slice (seeded), with the parameter
names of the old code (new code must still accept them), and stores every
heatmap, its model-resolution map and the forward-pass count.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

RUNS = [
    ("occlusion", {"patch": 32, "stride": 16}),
    ("occlusion", {"patch": 32, "stride": 16, "fill": "mean"}),
    ("adaptive-occlusion", {"patch": 16, "stride": 8, "levels": 1, "threshold": 0.3}),
    ("rise", {"n_masks": 64, "grid": 5}),
    ("rise", {"n_masks": 64, "grid": 5, "center": True}),
    ("lime", {"n_samples": 40}),
    ("lime", {"n_samples": 30, "multiscale": True}),
    ("ig", {"n_steps": 4, "nt_samples": 2}),
    ("gradcam", {}),
    ("causal", {"block": 32, "n_fillers": 4, "n_screen": 2}),
    ("segx", {"base": "occlusion", "base_params": {"patch": 32, "stride": 16}}),
]


def compute() -> dict:
    from napari_xaiclip.explain import explain
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.phantom import make_phantom

    vol, labels, _ = make_phantom(shape=(8, 128, 128), seed=3)
    z = 4
    img, gt = vol.data[z], labels[z] == 1
    ys, xs = np.nonzero(gt)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    roi = np.zeros_like(gt)
    roi[max(0, ys.min() - 4):ys.max() + 5, max(0, xs.min() - 4):xs.max() + 5] = True
    seg = load_segmenter("phantom", device="cpu")
    out = {}
    for i, (method, params) in enumerate(RUNS):
        for mode, r in (("traditional", None), ("roi", roi)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = explain(method, seg, img, box=box, roi=r, seed=7, batch_size=16, **params)
            key = f"{i:02d}-{method}-{mode}"
            out[key + "/heatmap"] = ex.heatmap
            out[key + "/model"] = np.asarray(ex.model_heatmap)
            out[key + "/n_forward"] = np.array(ex.n_forward)
            print(f"{key}: forwards {ex.n_forward}, max |map| {np.abs(ex.heatmap).max():.4g}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save")
    g.add_argument("--check")
    args = p.parse_args(argv)
    now = compute()
    if args.save:
        np.savez_compressed(args.save, **now)
        print(f"saved {len(now)} arrays to {args.save}")
        return 0
    old = dict(np.load(args.check))
    bad = [k for k in old if k not in now or old[k].shape != now[k].shape
           or not np.allclose(old[k], now[k], rtol=1e-5, atol=1e-6)]
    for k in bad:
        diff = "missing" if k not in now else f"max diff {np.abs(old[k] - now[k]).max() if old[k].shape == now[k].shape else 'shape'}"
        print(f"DIFFERS {k}: {diff}")
    print(f"{len(old) - len(bad)} of {len(old)} arrays identical (rtol 1e-5, atol 1e-6)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
