"""The trivial map's deletion/insertion AUC on the LiteMedSAM section's real-CT slices.

The LiteMedSAM section reports the AUCs of ROI-guided occlusion; this adds, beside them, the
same curves for a map that is constant inside the same ROI (LiteMedSAM's own mask grown by
ROI_DILATION px), so those figures can be read against a baseline. About 100 LiteMedSAM
forwards per slice. Stores ``litemedsam.trivial`` in benchmarks/results.json.

    python benchmarks/litemedsam_trivial.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from bench_litemedsam import ROI_DILATION, real_ct_cases  # noqa: E402

RESULTS = Path(__file__).parent / "results.json"


def main() -> int:
    from napari_xaiclip.explain.base import Context
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.pipeline import _trivial_curves

    seg = load_segmenter("default", device="cpu")
    steps = json.loads(RESULTS.read_text())["litemedsam"].get("curve_steps", 50)
    rows = []
    for c in real_ct_cases():
        t0 = time.perf_counter()
        roi = ndi.binary_dilation(seg.segment(c["image"], box=c["box"]) > 0.5, iterations=ROI_DILATION)
        ctx = Context(seg, c["image"], box=c["box"], target="dice", seed=0, batch_size=1)
        curves = _trivial_curves(seg, roi, ctx, steps, seed=0)
        rows.append({"slice": f"real CT, {c['name']}", **curves, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    results = json.loads(RESULTS.read_text())
    results["litemedsam"]["trivial"] = rows
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
