"""Keep Triton out of the napari process.

torch imports Triton lazily (through torchvision and torch._dynamo). Its
library bundles LLVM, and loading it after napari has created an OpenGL
context on Mesa (whose llvmpipe and radeonsi drivers also load LLVM) crashes
the process. So the GUI process marks Triton as absent and torch treats it
as not installed: ``torch.compile`` on a CPU still works (it generates C++),
on a GPU it needs Triton, fails and the segmenter runs eager, with the reason
in the run's ``speed_reasons``. Set ``XAICLIP_ALLOW_TRITON=1`` to opt out.
"""

from __future__ import annotations

import os
import sys


def keep_triton_out() -> bool:
    """Mark Triton unavailable unless it is already loaded; returns True when it did."""
    if "triton" in sys.modules or os.environ.get("XAICLIP_ALLOW_TRITON") == "1":
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError, find_spec returns None
    return True
