"""Execution modes for a segmenter's forward passes: ``auto``, ``eager``, ``compile``, ``bf16``.

Perturbation explainers spend nearly all their time in no-grad forwards of the
same network, so a faster forward is a faster explanation. :func:`apply_speed`
installs a mode on a segmenter and returns a :class:`SpeedReport` saying what
was chosen and why; ``report.to_record()`` is a flat dict for provenance.

* ``eager``: fp32, the network as loaded (the engine already runs every
  perturbation batch under ``torch.inference_mode``).
* ``compile``: ``torch.compile`` of the heavy part (the image encoder of the
  SAM family, the whole network otherwise) with static shapes at one batch
  size (``batch``, the explanations' batch size), the inductor caches in a
  persistent directory (:func:`compile_cache_dir`) so a later process reuses
  the compiled kernels. The first call compiles (minutes for LiteMedSAM's
  encoder on a CPU; much less with a warm cache). Full batches run compiled, a
  remainder of more than half a batch padded, a smaller one eager: a dynamic
  batch dimension ran slower than eager on a CPU, and each further shape is
  another compile.
* ``bf16``: ``torch.autocast(..., dtype=torch.bfloat16)`` where the hardware
  has native bf16 (CUDA: ``torch.cuda.is_bf16_supported()``; CPU: AVX512-BF16
  or AMX), output cast back to fp32.
* ``auto`` (the default of the command and the GUI): the fastest mode whose
  occlusion maps stayed within Spearman 0.99 and top-20 % IoU 0.95 of fp32 eager
  when measured (docs/benchmarks.md). On CUDA, compile in fp32: bf16 there
  moved LiteMedSAM's maps to top-20 % IoU 0.88-0.90. On a CPU, compile when this
  model was compiled here before at this batch size (``xaiclip warmup``, or an
  earlier compile run: a marker in the cache says so), since its first compile
  takes minutes; otherwise bf16 if the CPU has it natively (LiteMedSAM's and the
  phantom model's maps stayed at Spearman >= 0.999, IoU >= 0.97), else eager.
  Elsewhere (MPS), eager.

A mode other than eager is accepted only if a probe forward (a synthetic
slice and a perturbed copy of it, box prompt) agrees with fp32 eager: mask
Dice (logits > 0) >= :data:`DICE_MIN` and logits cosine >= :data:`COSINE_MIN`.
Otherwise, or when compiling fails, the segmenter stays eager and the report
says why; a compiled forward that fails later also falls back to eager, and
the report gains the reason.

Only plain no-grad forwards take the fast path. A forward with gradients
enabled (integrated gradients, Grad-CAM), with a hook anywhere on the network
(component ablation, Grad-CAM, feature recording), under a dispatch mode (the
FLOP counter) or on a copy of the segmenter with another network (the
randomisation check) runs the network as loaded, in fp32. The network itself is
never modified, so :meth:`Segmenter.logits` stays differentiable.

Loaded segmenters are cached per process, so a mode applied to
``load_segmenter("default")`` holds for every later user of that object;
``apply_speed(seg, "eager")`` removes it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["COSINE_MIN", "DICE_MIN", "MODES", "SpeedReport", "apply_speed", "bf16_support", "compile_cache_dir",
           "ensure_speed", "speed_record", "speed_report"]

MODES = ("auto", "eager", "compile", "bf16")
#: Probe agreement a mode needs against fp32 eager to be accepted.
DICE_MIN = 0.99
COSINE_MIN = 0.999


@dataclass
class SpeedReport:
    """What :func:`apply_speed` chose and why.

    ``chosen`` is "eager", "compile", "bf16" or "bf16+compile"; ``reasons`` one line per
    decision; ``compile_seconds`` the first compiled call (compile included), ``compile_batch`` the
    batch size compiled for; ``max_abs_diff``,
    ``cosine``, ``dice`` the probe's logits and mask agreement with fp32 eager (None for eager);
    ``dtype`` the compute dtype of the fast path.
    """

    requested: str
    chosen: str = "eager"
    reasons: list[str] = field(default_factory=list)
    compile_seconds: float | None = None
    compile_batch: int | None = None
    max_abs_diff: float | None = None
    cosine: float | None = None
    dice: float | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def to_record(self) -> dict:
        """Flat plain values for provenance records (reasons joined with "; ")."""
        def r(v, digits):
            return None if v is None else round(float(v), digits)

        return {"speed_requested": self.requested, "speed_chosen": self.chosen,
                "speed_reasons": "; ".join(self.reasons), "speed_compile_s": r(self.compile_seconds, 2),
                "speed_compile_batch": self.compile_batch,
                "speed_max_abs_diff": r(self.max_abs_diff, 8), "speed_cosine": r(self.cosine, 6),
                "speed_dice": r(self.dice, 6), "speed_device": self.device, "speed_dtype": self.dtype}


def speed_report(segmenter) -> SpeedReport | None:
    """The report of the mode installed on ``segmenter`` (None if none was applied)."""
    runner = getattr(segmenter, "__dict__", {}).get("_speed")
    return None if runner is None else runner.report


def speed_record(segmenter) -> dict:
    """``speed_report(segmenter).to_record()``, or an eager record when no mode was applied."""
    report = speed_report(segmenter)
    if report is None:
        report = SpeedReport(requested="eager", reasons=["eager: no other mode applied"],
                             device=str(getattr(segmenter, "device", None) or "cpu"))
    return report.to_record()


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled graphs and kernels between processes."""
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("napari-xaiclip", appauthor=False))
    except ImportError:
        base = Path.home() / ".cache" / "napari-xaiclip"
    return base / "torch-compile"


def _use_cache_dir(path: Path | None) -> str:
    """Point inductor's caches at ``path`` (default :func:`compile_cache_dir`) unless the user chose one."""
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if path is not None or not current or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        target = Path(path or compile_cache_dir()).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
    inductor_config.fx_graph_cache = True
    with contextlib.suppress(ImportError, AttributeError):
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def bf16_support(device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and what that rests on."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return ok, "CUDA bf16 " + ("supported" if ok else "not supported on this GPU")
    if kind != "cpu":
        return False, f"bf16 autocast is only tried on CPU and CUDA, not {kind}"
    cpu = getattr(torch, "cpu", None)
    for name, what in (("_is_avx512_bf16_supported", "AVX512-BF16"), ("_is_amx_tile_supported", "AMX")):
        check = getattr(cpu, name, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True, f"CPU has {what}"
    flags = _cpuinfo_flags()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True, "CPU has native bf16 (" + ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})) + ")"
    return False, "this CPU has no native bf16 (no AVX512-BF16 or AMX): emulated bf16 is slower than fp32"


def _cpuinfo_flags() -> set[str]:
    if not sys.platform.startswith("linux"):
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    out: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            out.update(value.split())
    return out


class _Network:
    """The segmenter's network as its ``logits`` sees it on the fast path: compiled parts by
    attribute name ("" = calling the network itself), everything else the real network."""

    def __init__(self, real, parts: dict):
        self.__dict__.update(_real=real, _parts=parts)

    def __getattr__(self, name):
        if "_parts" not in self.__dict__:
            raise AttributeError(name)
        parts = self.__dict__["_parts"]
        return parts[name] if name in parts else getattr(self.__dict__["_real"], name)

    def __call__(self, *args, **kwargs):
        parts = self.__dict__["_parts"]
        return (parts[""] if "" in parts else self.__dict__["_real"])(*args, **kwargs)


class _Compiled:
    """A ``torch.compile``d module with static shapes, at batch ``batch``.

    Graphs with a dynamic batch dimension ran slower than eager on a CPU, and every further
    static shape is another compile of minutes, so one batch size is compiled: full chunks of
    ``batch`` run compiled, a remainder of more than half a batch runs compiled after padding
    (cheaper than eager at about 2x), a smaller one runs eager. Inputs are made inference tensors,
    because dynamo guards on the tensor kind (another kind would mean another graph).
    """

    def __init__(self, module, batch: int):
        import torch

        self.module, self.batch = module, max(1, int(batch))
        self.fn = torch.compile(module, dynamic=False)

    def __getattr__(self, name):   # attributes (img_size, ...) of the module it stands for
        if "module" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["module"], name)

    def __call__(self, x, *args, **kwargs):
        import torch

        b = self.batch
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start:start + b]
            m = chunk.shape[0]
            if 2 * m <= b and m < b:
                outs.append(self.module(chunk, *args, **kwargs))
                continue
            if m < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - m, *chunk.shape[1:])])
            elif not chunk.is_inference():
                chunk = chunk.clone()
            out = self.fn(chunk, *args, **kwargs)
            outs.append(out if m == b else _take(out, m, b))
        return outs[0] if len(outs) == 1 else _cat(outs)


def _take(out, m: int, b: int):
    """The first ``m`` items of every batch-``b`` tensor in ``out``."""
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t[:m] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == b else t, out)


def _cat(outs: list):
    """Outputs of consecutive chunks joined along the batch dimension (any nesting of tensors)."""
    import torch
    from torch.utils._pytree import tree_flatten, tree_unflatten

    flat = [tree_flatten(o) for o in outs]
    leaves = [torch.cat(parts) if isinstance(parts[0], torch.Tensor) and parts[0].ndim else parts[0]
              for parts in zip(*(f[0] for f in flat))]
    return tree_unflatten(leaves, flat[0][1])


def _heavy_parts(module) -> dict:
    import torch

    encoder = getattr(module, "image_encoder", None)
    if isinstance(encoder, torch.nn.Module):
        return {"image_encoder": encoder}
    return {"": module}


def _hooked(module) -> bool:
    """Whether any forward/backward hook is on the network or registered globally."""
    import torch.nn.modules.module as mm

    if mm._global_forward_hooks or mm._global_forward_pre_hooks or mm._global_backward_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in module.modules())


def _compiling() -> bool:
    import torch

    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check and check())


class _Runner:
    """Installed as ``segmenter._speed``; ``Segmenter.logits`` hands every forward to it."""

    def __init__(self, module, report: SpeedReport, autocast=None, parts: dict | None = None):
        self.module = module
        self.report = report
        self.autocast = autocast      # torch dtype or None
        self.parts = dict(parts or {})
        self.enabled = True

    def __deepcopy__(self, memo):
        """A deep copy of the segmenter runs eager: compiled code is not copied."""
        report = SpeedReport(requested=self.report.requested, device=self.report.device,
                             reasons=[*self.report.reasons, "a copy of the segmenter: eager"])
        copied = _Runner(None, report)
        copied.enabled = False
        return copied

    def engages(self, seg) -> bool:
        import torch
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return (self.enabled and seg.module is self.module and not torch.is_grad_enabled()
                and _get_current_dispatch_mode() is None and not _compiling()
                and not _hooked(self.module))

    def fast(self, logits, seg, images, *args, **kwargs):
        import torch

        view = seg
        if self.parts:
            view = copy.copy(seg)   # the compiled parts only for this call; the segmenter stays as it is
            view.__dict__["module"] = _Network(self.module, self.parts)
        cast = (torch.autocast(images.device.type, dtype=self.autocast) if self.autocast is not None
                else contextlib.nullcontext())
        inference = torch.is_inference_mode_enabled()
        with torch.inference_mode(), cast:   # one grad state: dynamo would recompile for another
            out = logits(view, images, *args, **kwargs)
        if out.is_floating_point() and out.dtype != torch.float32:
            out = out.float()
        return out if inference else out.clone()   # a normal tensor outside inference mode

    def __call__(self, logits, seg, images, *args, **kwargs):
        if not self.engages(seg):
            return logits(seg, images, *args, **kwargs)
        try:
            return self.fast(logits, seg, images, *args, **kwargs)
        except Exception as exc:  # any failure of the fast path: stay correct, run eager from now on
            self.enabled = False
            self.report.reasons.append(f"{self.report.chosen} failed at run time ({_short(exc)}); eager from then on")
            self.report.chosen, self.report.dtype = "eager", "float32"
            return logits(seg, images, *args, **kwargs)


def _short(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _probe_inputs(seg):
    """(2, C, S, S) model inputs (a synthetic slice and a copy with a square zeroed) and a box prompt."""
    import torch

    s = int(seg.input_size)
    yy, xx = np.mgrid[0:s, 0:s] / s
    image = 0.2 + 0.3 * xx
    disc = (yy - 0.5) ** 2 + (xx - 0.45) ** 2 <= 0.18 ** 2
    image = image + 0.5 * disc - 0.15 * (((yy - 0.3) / 0.08) ** 2 + ((xx - 0.72) / 0.12) ** 2 <= 1)
    image = (image + np.random.default_rng(0).normal(0, 0.02, image.shape)).astype(np.float32)
    x, geometry = seg.preprocess(image)
    rows, cols = np.nonzero(disc)
    pad = 0.03 * s
    box = (cols.min() - pad, rows.min() - pad, cols.max() + pad, rows.max() + pad)
    prompt = seg.encode_prompt(box=box, geometry=geometry)
    occluded = x.clone()
    q = s // 8
    occluded[:, s // 2 - q:s // 2, s // 2 - q:s // 2] = 0
    return torch.stack([x, occluded]), prompt


def _auto_batch(seg, device) -> int:
    from ..explain.base import auto_batch_size

    return auto_batch_size(int(seg.input_size), device)


def _raw_logits(seg):
    """The class's ``logits`` without the NaN check and the lock (what the runner is handed)."""
    fn = type(seg).logits
    return getattr(fn, "__wrapped__", fn)


def _agreement(ref, out) -> dict:
    import torch

    a, b = ref.double().flatten(), out.double().flatten()
    denom = float(a.norm() * b.norm())
    cosine = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    ma, mb = a > 0, b > 0
    total = int(ma.sum() + mb.sum())
    dice = 2.0 * int((ma & mb).sum()) / total if total else 1.0
    return {"max_abs_diff": float((a - b).abs().max()), "cosine": cosine, "dice": dice}


def apply_speed(segmenter, mode: str = "auto", cache_dir: str | Path | None = None,
                batch: int | None = None) -> SpeedReport:
    """Install an execution mode on ``segmenter`` (see the module docstring) and say what was chosen.

    ``cache_dir``: inductor's cache directory for ``compile`` (default :func:`compile_cache_dir`, or
    ``TORCHINDUCTOR_CACHE_DIR`` when the user set it). ``batch``: the batch size ``compile`` compiles
    for; use the explanations' batch size (default: the engine's automatic one, 16 at 256 px on a
    CPU). Replaces any mode applied before.

    >>> from napari_xaiclip.models import load_segmenter  # doctest: +SKIP
    >>> apply_speed(load_segmenter("default"), "auto").chosen  # doctest: +SKIP
    'bf16'
    """
    if mode not in MODES:
        raise ValueError(f"unknown speed mode {mode!r}; choose from {', '.join(MODES)}")
    with getattr(segmenter, "lock", None) or contextlib.nullcontext():   # no forward sees a half-made mode
        return _apply(segmenter, mode, cache_dir, batch)


def ensure_speed(segmenter, mode: str = "auto", cache_dir: str | Path | None = None,
                 batch: int | None = None) -> SpeedReport:
    """:func:`apply_speed` unless ``mode`` was already asked for on this segmenter object, so the probe
    and the compile run once per loaded model, not once per case."""
    current = speed_report(segmenter)
    if current is not None and current.requested == mode:
        return current
    if current is None and mode == "eager":
        return SpeedReport(requested="eager", reasons=["eager asked for"],
                           device=str(getattr(segmenter, "device", None) or "cpu"))
    return apply_speed(segmenter, mode, cache_dir, batch)


def _auto_steps(device, report: SpeedReport, warm: bool = False) -> list[str]:
    """What ``auto`` tries on ``device``: the fastest mode whose occlusion maps stayed within Spearman
    0.99 and top-20 % IoU 0.95 of fp32 eager in the measurements of docs/benchmarks.md. ``warm``:
    this model was compiled at this batch size before (its kernels are in the cache)."""
    if device.type == "cuda":
        report.reasons.append("auto on CUDA compiles in fp32; bf16 only when asked (on an H200 it moved "
                              "LiteMedSAM's occlusion maps to top-20 % IoU 0.88-0.90 of fp32)")
        return ["compile"]
    if device.type == "cpu":
        if warm:
            report.reasons.append("auto on a CPU compiles: this model was compiled here before at this batch "
                                  "size (cached)")
            return ["compile"]
        report.reasons.append("auto on a CPU compiles only a model compiled before (the first compile takes "
                              "minutes): run `xaiclip warmup` once for compile's speed-up")
        return ["bf16"]
    report.reasons.append(f"auto keeps {device.type} in eager")
    return []


def _warm_marker(segmenter, batch: int, device) -> Path:
    """A file in the compile cache saying this model was compiled at ``batch`` on this kind of device."""
    import hashlib

    import torch

    key = "|".join(str(v) for v in (type(segmenter).__qualname__, getattr(segmenter, "name", ""),
                                     getattr(segmenter, "input_size", ""), batch, torch.__version__, device.type))
    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir())
    return cache / "xaiclip-warm" / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".json")


def _mark_warm(segmenter, batch: int, device, seconds: float) -> None:
    import json

    marker = _warm_marker(segmenter, batch, device)
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"model": getattr(segmenter, "name", ""), "batch": batch,
                                      "device": device.type, "compile_seconds": round(seconds, 1)}) + "\n")


def _apply(segmenter, mode: str, cache_dir, batch) -> SpeedReport:
    import torch

    from .base import Segmenter

    segmenter.__dict__.pop("_speed", None)
    device = torch.device(getattr(segmenter, "device", None) or "cpu")
    report = SpeedReport(requested=mode, device=str(device))
    module = getattr(segmenter, "module", None)
    if mode == "eager":
        report.reasons.append("eager asked for")
        return report
    if not isinstance(segmenter, Segmenter):   # only Segmenter.logits hands its forwards to a mode
        report.reasons.append(f"{mode} needs a Segmenter subclass, got {type(segmenter).__name__}; eager")
        return report
    if not isinstance(module, torch.nn.Module):
        report.reasons.append(f"{mode} needs the segmenter's network as an nn.Module; eager")
        return report
    if mode == "auto":
        size = int(batch or _auto_batch(segmenter, device))
        steps = _auto_steps(device, report, warm=_warm_marker(segmenter, size, device).is_file())
    else:
        steps = [mode]

    images, prompt = _probe_inputs(segmenter)
    with torch.inference_mode():
        ref = segmenter.logits(images, prompt).float()
    autocast, parts, chosen = None, {}, []
    for step in steps:
        if step == "bf16":
            ok, why = bf16_support(device)
            if not ok:
                report.reasons.append(f"bf16 not used: {why}")
                continue
            trial = _Runner(module, report, torch.bfloat16, parts)
        else:
            cache = _use_cache_dir(cache_dir)
            size = int(batch or _auto_batch(segmenter, device))
            try:
                compiled = {name: _Compiled(part, size) for name, part in _heavy_parts(module).items()}
            except Exception as exc:
                report.reasons.append(f"compile not used: torch.compile failed ({_short(exc)})")
                continue
            trial = _Runner(module, report, autocast, compiled)
            why = (f"torch.compile of {', '.join(n or 'the whole network' for n in compiled)} at batch {size}, "
                   f"cache {cache}")
        probe = images if step == "bf16" else images[torch.arange(size) % len(images)]   # compile at its batch
        t0 = time.perf_counter()
        try:
            with segmenter.lock, torch.inference_mode():
                out = trial.fast(_raw_logits(segmenter), segmenter, probe, prompt).float()[:len(images)]
        except Exception as exc:
            report.reasons.append(f"{step} not used: the probe forward failed ({_short(exc)})")
            continue
        seconds = time.perf_counter() - t0
        agree = _agreement(ref, out)
        if not (math.isfinite(agree["cosine"]) and agree["dice"] >= DICE_MIN and agree["cosine"] >= COSINE_MIN):
            report.reasons.append(f"{step} not used: probe disagrees with fp32 (mask Dice {agree['dice']:.4f}, "
                                  f"logits cosine {agree['cosine']:.5f}; needs >= {DICE_MIN}, >= {COSINE_MIN})")
            continue
        chosen.append(step)
        autocast, parts = trial.autocast, trial.parts
        if step == "compile":
            report.compile_seconds, report.compile_batch = seconds, size
            _mark_warm(segmenter, size, device, seconds)
        report.max_abs_diff, report.cosine, report.dice = agree["max_abs_diff"], agree["cosine"], agree["dice"]
        report.reasons.append(f"{step}: {why}; probe mask Dice {agree['dice']:.4f}, logits cosine "
                              f"{agree['cosine']:.5f}, max |diff| {agree['max_abs_diff']:.3g}")
    if not chosen:
        report.reasons.append("eager (fp32)")
        return report
    report.chosen = "+".join(chosen)
    report.dtype = "bfloat16" if autocast is not None else "float32"
    segmenter.__dict__["_speed"] = _Runner(module, report, autocast, parts)
    return report
