"""One model object serves every widget and worker of the process: a run that puts hooks on it
(component ablation, Grad-CAM) must never change what another run's forward pass computes."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from napari_xaiclip.explain import components
from napari_xaiclip.models.sam import SamSegmenter, build_sam


def _tiny_sam():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = build_sam(image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                        window_size=2, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_hidden=32)
    return SamSegmenter(sam, mode="medsam", device="cpu")


def test_a_forward_from_another_thread_never_sees_a_component_ablation(monkeypatch):
    seg = _tiny_sam()
    img = np.random.default_rng(0).normal(0, 1, (64, 64)).astype(np.float32)
    x, geometry = seg.preprocess(img)
    prompt = seg.encode_prompt((10, 10, 50, 50), geometry=geometry)
    probe = x[None] + 0  # a copy: not the unperturbed tensor of this thread
    with torch.inference_mode():
        clean = seg.logits(probe, prompt).float()
    seen, workers = {}, []
    real_ablate = components.ablate

    def ablate_and_race(net, name, replacement=None):
        # while this component is ablated, another thread runs an ordinary forward pass
        cm = real_ablate(net, name, replacement)

        class Racing:
            def __enter__(self):
                module = cm.__enter__()
                worker = threading.Thread(target=lambda: seen.setdefault(name, _forward(seg, probe, prompt)))
                worker.start()
                workers.append(worker)
                time.sleep(0.05)  # the other thread is now waiting for, or running, its pass
                return module

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Racing()

    monkeypatch.setattr(components, "ablate", ablate_and_race)
    names = ["image_encoder.blocks.0.attn", "mask_decoder.output_upscaling"]
    records = components.component_effects(seg, img, box=(10, 10, 50, 50), components=names)
    for w in workers:
        w.join(30)
    assert any(r["target_ablated"] != r["target_base"] for r in records)  # the ablations did change the output
    for name in names:
        torch.testing.assert_close(seen[name], clean)


def _forward(seg, images, prompt):
    with torch.inference_mode():
        return seg.logits(images, prompt).float()
