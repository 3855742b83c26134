"""napari-xaiclip: explain medical image segmentation models on CT/MR volumes.

The core (everything outside ``widgets/`` and the napari hooks) is free of Qt
and napari: numpy and torch in, numpy out.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
