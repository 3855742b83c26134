"""Execution modes (models.speed): compile and bf16 agree with eager or fall back with a reason,
gradient explainers are untouched, and hooked, grad-enabled or copied-network forwards stay eager."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_xaiclip.explain import explain
from napari_xaiclip.models import speed
from napari_xaiclip.models.speed import COSINE_MIN, DICE_MIN, apply_speed, speed_record, speed_report

from toy_models import TinyConvNet, make_segmenter

torch.set_num_threads(1)

S = 32
BOX = (8, 6, 24, 26)
#: kept between test runs, so only the first run pays the compile
CACHE = Path(tempfile.gettempdir()) / "napari-xaiclip-test-inductor"


def _seg(seed: int = 3):
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=seed), S, box="channel", counting=False)
    seg.gflops  # noqa: B018  (counted before any mode is applied)
    return seg


def _slice():
    return np.random.default_rng(0).uniform(0.2, 1.0, (S, S)).astype(np.float32)


def _logits(seg, images):
    prompt = seg.encode_prompt(box=BOX)
    with torch.inference_mode():
        return seg.logits(images, prompt).float()


@pytest.fixture
def cache_env(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(CACHE))
    return CACHE


def test_unknown_mode_refused():
    with pytest.raises(ValueError, match="unknown speed mode 'fast'; choose from auto, eager, compile, bf16"):
        apply_speed(_seg(), "fast")


def test_eager_installs_nothing_and_removes_a_mode(monkeypatch):
    seg = _seg()
    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    apply_speed(seg, "bf16")
    report = apply_speed(seg, "eager")
    assert report.chosen == "eager" and report.dtype == "float32"
    assert "_speed" not in seg.__dict__ and speed_report(seg) is None
    rec = speed_record(seg)
    assert rec["speed_chosen"] == "eager" and rec["speed_requested"] == "eager"
    assert set(rec) == set(report.to_record())


def test_compile_matches_eager(cache_env, monkeypatch):
    seg = _seg()
    x = torch.rand(20, 1, S, S, generator=torch.Generator().manual_seed(1))
    eager = _logits(seg, x)
    calls = []
    real_compile = torch.compile

    def counting_compile(module, **kwargs):
        fn = real_compile(module, **kwargs)
        return lambda *a, **k: calls.append(a[0].shape[0]) or fn(*a, **k)

    monkeypatch.setattr(torch, "compile", counting_compile)
    report = apply_speed(seg, "compile", batch=8)
    if report.chosen != "compile":  # torch.compile unusable here: the fallback must say why
        assert report.chosen == "eager" and "_speed" not in seg.__dict__
        assert any(r.startswith("compile not used") for r in report.reasons), report.reasons
        pytest.skip(f"torch.compile unavailable: {report.reasons}")
    assert report.compile_seconds > 0 and report.max_abs_diff <= 1e-4 and report.cosine >= COSINE_MIN
    assert report.compile_batch == 8 and report.to_record()["speed_chosen"] == "compile"
    assert calls == [8]   # the probe, at the compiled batch
    # full batches compiled; a remainder of more than half a batch padded and compiled; a smaller one eager
    for n, compiled in ((8, [8]), (5, [8]), (3, []), (1, []), (20, [8, 8])):
        calls.clear()
        fast = _logits(seg, x[:n])
        assert fast.shape == (n, S, S) and fast.dtype == torch.float32
        np.testing.assert_allclose(fast.numpy(), eager[:n].numpy(), atol=1e-4)
        assert calls == compiled, n


def test_broken_compile_falls_back_silently(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    seg = _seg()
    x = torch.rand(4, 1, S, S, generator=torch.Generator().manual_seed(2))
    eager = _logits(seg, x)
    report = apply_speed(seg, "compile", cache_dir=tempfile.mkdtemp())
    assert report.chosen == "eager" and "_speed" not in seg.__dict__
    assert any("torch.compile failed (RuntimeError: no C++ compiler)" in r for r in report.reasons), report.reasons
    assert "no C++ compiler" in report.to_record()["speed_reasons"]
    assert torch.equal(_logits(seg, x), eager)


def test_compiled_forward_failing_later_falls_back(monkeypatch):
    class Flaky:   # compiles, passes the probe, then fails on the next batch
        def __init__(self, module, batch):
            self.module, self.calls = module, 0

        def __call__(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("recompile failed")
            return self.module(x)

    monkeypatch.setattr(speed, "_Compiled", Flaky)
    seg = _seg()
    x = torch.rand(4, 1, S, S, generator=torch.Generator().manual_seed(2))
    report = apply_speed(seg, "compile", cache_dir=tempfile.mkdtemp())
    assert report.chosen == "compile"
    out = _logits(seg, x)
    assert report.chosen == "eager" and "failed at run time" in report.reasons[-1]
    assert "recompile failed" in report.reasons[-1]
    seg.__dict__.pop("_speed")
    assert torch.equal(out, _logits(seg, x))


def test_bf16_accepted_within_tolerance_or_falls_back():
    seg = _seg()
    x = torch.rand(6, 1, S, S, generator=torch.Generator().manual_seed(4))
    eager = _logits(seg, x)
    report = apply_speed(seg, "bf16")
    supported, why = speed.bf16_support(torch.device("cpu"))
    if report.chosen == "bf16":
        assert supported and report.dtype == "bfloat16"
        assert report.dice >= DICE_MIN and report.cosine >= COSINE_MIN
        fast = _logits(seg, x)
        assert fast.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(fast.flatten(), eager.flatten(), dim=0)
        assert cos >= 0.999 and not torch.equal(fast, eager)   # really computed in bf16
    else:
        assert report.chosen == "eager" and report.dtype == "float32"
        assert any(r.startswith("bf16 not used") for r in report.reasons), report.reasons
        assert torch.equal(_logits(seg, x), eager)


def test_bf16_refused_without_hardware_or_outside_tolerance(monkeypatch):
    seg = _seg()
    monkeypatch.setattr(speed, "bf16_support", lambda device: (False, "no AVX512-BF16 here"))
    report = apply_speed(seg, "bf16")
    assert report.chosen == "eager" and "bf16 not used: no AVX512-BF16 here" in report.reasons
    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 1.5)   # nothing can pass
    report = apply_speed(seg, "bf16")
    assert report.chosen == "eager" and "_speed" not in seg.__dict__
    assert any("probe disagrees with fp32" in r for r in report.reasons), report.reasons


def test_auto_on_cpu_compiles_only_a_model_compiled_before(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(speed, "bf16_support", lambda device: (False, "none"))
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("auto compiled a cold model on a CPU"))
    cold = apply_speed(_seg(), "auto")
    assert cold.chosen == "eager" and any("run `xaiclip warmup` once" in r for r in cold.reasons), cold.reasons
    calls = []

    def fake_compile(module, **kwargs):   # stands for a compile whose kernels come from the cache
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    seg = _seg()
    assert apply_speed(seg, "compile", batch=64).chosen == "compile"   # what `xaiclip warmup` does
    assert len(calls) == 1 and list((tmp_path / "xaiclip-warm").glob("*.json"))
    warm = apply_speed(_seg(), "auto")   # another object of the same model: the marker is found
    assert warm.chosen == "compile" and len(calls) == 2, warm.reasons
    assert any("compiled here before" in r for r in warm.reasons)
    other = apply_speed(_seg(), "auto", batch=8)   # another batch size was never compiled
    assert other.chosen == "eager" and len(calls) == 2


@pytest.mark.parametrize("mode", ["bf16", "compile"])
def test_gradient_explainers_unchanged(mode, cache_env, monkeypatch):
    """IG and Grad-CAM differentiate through the network as loaded (fp32, not compiled); only their
    no-grad baseline forward takes the fast path."""
    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 0.99)   # the toy net's logits sit near 0; bf16 must pass here
    monkeypatch.setattr(speed, "DICE_MIN", 0.9)
    sl = _slice()
    seg = _seg()
    ref = {m: explain(m, seg, sl, box=BOX, n_samples=0, n_steps=8) if m == "ig" else
           explain(m, seg, sl, box=BOX, layer="conv1") for m in ("ig", "gradcam")}
    report = apply_speed(seg, mode)
    if report.chosen != mode:
        pytest.skip(f"{mode} unavailable: {report.reasons}")
    for m, before in ref.items():
        after = (explain(m, seg, sl, box=BOX, n_samples=0, n_steps=8) if m == "ig"
                 else explain(m, seg, sl, box=BOX, layer="conv1"))
        assert np.all(np.isfinite(after.heatmap)) and np.abs(after.heatmap).max() > 1e-6
        np.testing.assert_allclose(after.heatmap, before.heatmap, atol=1e-5 * np.abs(before.heatmap).max())
        assert after.n_forward == before.n_forward
    with torch.enable_grad():   # a differentiable forward is the eager one
        x = torch.rand(2, 1, S, S, requires_grad=True)
        out = seg.logits(x, seg.encode_prompt(box=BOX))
        out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_perturbation_map_agrees_with_eager(monkeypatch):
    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 0.99)
    monkeypatch.setattr(speed, "DICE_MIN", 0.9)
    sl, seg = _slice(), _seg()
    before = explain("occlusion", seg, sl, box=BOX, target="roi-prob", window=8, stride=4)
    assert apply_speed(seg, "bf16").chosen == "bf16"
    after = explain("occlusion", seg, sl, box=BOX, target="roi-prob", window=8, stride=4)
    assert after.n_forward == before.n_forward
    r = np.corrcoef(after.heatmap.ravel(), before.heatmap.ravel())[0, 1]
    assert r > 0.99


def test_hooks_grad_and_copied_networks_stay_eager(monkeypatch):
    from napari_xaiclip.metrics import randomize_segmenter

    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 0.99)
    monkeypatch.setattr(speed, "DICE_MIN", 0.9)
    seg = _seg()
    x = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(5))
    eager = _logits(seg, x)
    assert apply_speed(seg, "bf16").chosen == "bf16"
    assert not torch.equal(_logits(seg, x), eager)
    handle = seg.module.conv1.register_forward_hook(lambda m, a, o: None)
    try:
        assert torch.equal(_logits(seg, x), eager)   # a hook (ablation, recording) sees the fp32 network
    finally:
        handle.remove()
    with torch.no_grad():   # not inference mode: the result must be usable later, e.g. in autograd
        out = seg.logits(x, seg.encode_prompt(box=BOX))
    assert not out.is_inference()
    rand = randomize_segmenter(seg, seed=1)   # shares the runner, not the network
    assert torch.equal(_logits(rand, x), _logits(_detached(rand), x))


def _detached(seg):
    import copy

    out = copy.copy(seg)
    out.__dict__.pop("_speed", None)
    return out


def test_cache_dir(monkeypatch, tmp_path):
    default = speed.compile_cache_dir()
    assert default.name == "torch-compile" and "napari-xaiclip" in default.parts
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert speed._use_cache_dir(None) == str(tmp_path / "mine")   # the user's choice is kept
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setattr(speed, "compile_cache_dir", lambda: tmp_path / "ours")
    assert speed._use_cache_dir(None) == str(tmp_path / "ours") and (tmp_path / "ours").is_dir()


def test_sam_family_compiles_the_image_encoder_only(monkeypatch):
    from napari_xaiclip.models import load_segmenter

    seen = []

    class PassThrough:   # stands in for torch.compile: records what it is handed and called with
        def __init__(self, module, batch):
            self.module = module
            seen.append(("built", type(module).__name__, batch))

        def __call__(self, x):
            seen.append(("called", tuple(x.shape)))
            return self.module(x)

    monkeypatch.setattr(speed, "_Compiled", PassThrough)
    seg = load_segmenter("phantom", device="cpu", cache=False)
    x = torch.rand(2, 3, seg.input_size, seg.input_size, generator=torch.Generator().manual_seed(0))
    prompt = seg.encode_prompt(box=(60, 60, 180, 180))
    with torch.inference_mode():
        eager = seg.logits(x, prompt)
    report = apply_speed(seg, "compile", cache_dir=tempfile.mkdtemp())
    assert report.chosen == "compile" and "image_encoder" in report.reasons[-1]
    assert seen[0] == ("built", type(seg.module.image_encoder).__name__, 16)   # the automatic batch at 256 px
    assert report.compile_batch == 16
    seen.clear()
    with torch.inference_mode():
        fast = seg.logits(x, prompt)
    assert seen == [("called", (2, 3, seg.input_size, seg.input_size))]
    assert torch.equal(fast, eager) and seg.module.image_encoder is not None
    assert type(seg.module).__name__ == "Sam"   # the network itself is left as it was


def test_ensure_speed_probes_once(monkeypatch):
    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 0.99)
    monkeypatch.setattr(speed, "DICE_MIN", 0.9)
    seg = _seg()
    assert speed.ensure_speed(seg, "eager").chosen == "eager" and "_speed" not in seg.__dict__
    first = speed.ensure_speed(seg, "bf16")
    assert first.chosen == "bf16"
    monkeypatch.setattr(speed, "_probe_inputs", lambda s: pytest.fail("probed again"))
    assert speed.ensure_speed(seg, "bf16") is first
    assert speed.ensure_speed(seg, "eager").chosen == "eager" and "_speed" not in seg.__dict__


def test_objects_outside_the_segmenter_protocol_stay_eager():
    class Duck:   # implements logits without the Segmenter base: nothing routes its forwards
        module = torch.nn.Conv2d(1, 1, 1)
        device = torch.device("cpu")

    report = apply_speed(Duck(), "bf16")
    assert report.chosen == "eager" and "needs a Segmenter subclass" in report.reasons[-1]


def test_a_deep_copy_of_the_mode_runs_eager(monkeypatch):
    import copy

    monkeypatch.setattr(speed, "bf16_support", lambda device: (True, "test"))
    monkeypatch.setattr(speed, "COSINE_MIN", 0.99)
    monkeypatch.setattr(speed, "DICE_MIN", 0.9)
    seg = _seg()
    assert apply_speed(seg, "bf16").chosen == "bf16"
    twin = copy.deepcopy(seg.__dict__["_speed"])   # compiled code and autocast are not carried over
    assert not twin.enabled and twin.report.chosen == "eager" and "a copy" in twin.report.reasons[-1]
    assert speed_report(seg).chosen == "bf16"


def test_compile_makes_one_graph(cache_env):
    """Batch sizes and tensor kinds (made inside inference mode or not) share one compiled graph:
    on a CPU every further graph of a real model is another compile of minutes."""
    from torch._dynamo.utils import counters

    seg = make_segmenter(TinyConvNet(in_channels=1, seed=4), S, counting=False)   # images go in as they are
    report = apply_speed(seg, "compile", batch=4)
    if report.chosen != "compile":
        pytest.skip(f"torch.compile unavailable: {report.reasons}")
    graphs = counters["stats"]["unique_graphs"]
    prompt = seg.encode_prompt(box=BOX)
    for n in (4, 3, 1, 2, 9):
        outside = torch.rand(n, 1, S, S)
        with torch.inference_mode():
            inside = torch.rand(n, 1, S, S)
            for x in (outside, inside, outside[:, :, :, :]):
                seg.logits(x, prompt)
    assert counters["stats"]["unique_graphs"] == graphs


def test_auto_chooses_per_device_from_the_measured_map_tolerance():
    """auto: fp32 compile on CUDA (bf16 moved the maps there), bf16 on a CPU, eager elsewhere."""
    import torch

    from napari_xaiclip.models.speed import SpeedReport, _auto_steps

    for device, steps, says in (("cuda", ["compile"], "bf16 only when asked"), ("cpu", ["bf16"], "run `xaiclip warmup` once"),
                                ("mps", [], "keeps mps in eager")):
        report = SpeedReport(requested="auto")
        assert _auto_steps(torch.device(device), report) == steps
        assert says in report.reasons[-1]


def test_the_command_and_the_gui_default_to_auto():
    from napari_xaiclip.cli import build_parser
    from napari_xaiclip.jobs import Case

    args = build_parser().parse_args(["explain", "ct.nii.gz", "--out", "o"])
    assert args.speed == "auto" and Case(volume="ct.nii.gz").speed == "auto"


def test_warmup_compiles_ahead_and_says_so(cache_env, capsys):
    """``xaiclip warmup`` applies the mode once (the compile fills the cache) and prints what it chose."""
    from napari_xaiclip.cli import main

    code = main(["warmup", "--model", "phantom", "--device", "cpu", "--speed", "compile", "--batch", "2"])
    out = capsys.readouterr()
    if code == 1:   # torch.compile unusable here: the command must say so, not pretend
        assert "error: compile did not take" in out.err and "compile not used" in out.out
        pytest.skip("torch.compile unavailable here")
    assert code == 0, out
    assert out.out.startswith("phantom on cpu: compile ready in") and "later runs at batch 2" in out.out


def test_warmup_refuses_a_bad_batch(capsys):
    from napari_xaiclip.cli import main

    assert main(["warmup", "--model", "phantom", "--batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch must be 1..1024, got 0"
