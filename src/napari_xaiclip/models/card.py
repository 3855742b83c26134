"""The model card: LiteMedSAM (the default segmenter) and the shipped phantom-trained demo models,
the latter rendered from the cards stored in their weight files."""

from __future__ import annotations

from pathlib import Path

__all__ = ["TEST_SEEDS", "read_card", "render_model_card"]

#: Phantom seeds never used for training nor for choosing any training setting: the tests' score floors.
TEST_SEEDS = (9001, 9002)


def read_card(path: str | Path) -> dict:
    """The ``card`` dict stored in a weights file written by the project's trainers."""
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj.get("card", {}) if isinstance(obj, dict) else {}


def _seeds(seeds) -> str:
    seeds = list(seeds or [])
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds)) or "–"


def _score_table(scores: dict, organs) -> list[str]:
    rows = ["| modality | " + " | ".join(organs) + " |", "|---|" + "---|" * len(organs)]
    for modality, per in scores.items():
        if not isinstance(per, dict):
            continue
        cells = [f"{per.get(o):.3f}" if isinstance(per.get(o), (int, float)) else "–" for o in organs]
        counts = per.get("n_slices", {})
        rows.append(f"| {modality.upper()} | " + " | ".join(
            f"{c} ({counts.get(o, '?')} slices)" for c, o in zip(cells, organs)) + " |")
    return rows


def _segmenter_training(st: dict) -> list[str]:
    """Training lines, the first stage first when the model was fine-tuned (``--init``)."""
    stages = []
    while st:
        stages.append(st)
        st = st.get("previous") or {}
    stages.reverse()
    lines = []
    for i, stage in enumerate(stages):
        init = f" --init tiny_sam_stage{i}.pt" if i else ""
        seeds = stage.get("seeds") or []
        seed_arg = f" --seeds {seeds[0]}:{seeds[-1] + 1}" if seeds else ""
        name = "tiny_sam.pt" if i == len(stages) - 1 else f"tiny_sam_stage{i + 1}.pt"
        lines.append(
            f"- Training{' (stage ' + str(i + 1) + ')' if len(stages) > 1 else ''}: `xaiclip train-segmenter "
            f"--out {name}{init}{seed_arg} --steps {stage.get('steps')} --batch {stage.get('batch')} --lr {stage.get('lr')} "
            f"--seed {stage.get('seed')} --threads {stage.get('torch_threads')}`; "
            f"{stage.get('seconds', 0) / 60:.0f} minutes with {stage.get('torch_threads')} torch thread(s) on a shared 2-core CPU.")
    lines.append("- Loss Dice + BCE; AdamW with warm-up and cosine decay; augmentation: intensity (gamma, "
                 "contrast, noise), box jitter (10 % + 4 px), flips.")
    return lines


def _litemedsam_section() -> list[str]:
    from .litemedsam import LITEMEDSAM_CARD as c, LITEMEDSAM_SIZE

    return [
        "## Default segmenter: LiteMedSAM (`load_segmenter(\"default\")`, `\"litemedsam\"`)",
        "",
        f"- {c['model']}; 256 px input, 9,791,300 parameters; 78.56 GFLOPs per forward with one box "
        "(torch.utils.flop_counter); about 2 s per forward on a 2-core laptop-class CPU.",
        f"- Trained on: {c['trained_on']}.",
        f"- Source: {c['source']}. File `lite_medsam.pth`, {LITEMEDSAM_SIZE:,} bytes, SHA-256 `{c['sha256']}` "
        "(checked before every load).",
        f"- Licence: {c['licence']}.",
        f"- Cite: {c['cite']}.",
        "- Preprocessing (MedSAM's LiteMedSAM recipe, in this project's code): min-max of the (windowed) slice "
        "to [0, 1], 3 channels, longest side resized to 256 and zero-padded, box scaled by 256 / max(H, W), "
        "mask cropped to the unpadded area and resized to the slice.",
        "- A fine-tuned LiteMedSAM checkpoint loads with `litemedsam:PATH` (plain state dict or `{\"model\": ...}`).",
        "",
    ]


def render_model_card(segmenter_card: dict, localizer_card: dict) -> str:
    """Markdown for MODEL_CARD.md: LiteMedSAM, then the two stored phantom-model cards."""
    s, lc = segmenter_card, localizer_card
    organs = ["liver", "spleen", "right kidney", "left kidney"]
    st, lt = s.get("training", {}), lc.get("training", {})
    lines = [
        "# Model card",
        "",
        *_litemedsam_section(),
        "## The shipped phantom-trained demo models",
        "",
        "**These are demonstration models trained on a synthetic abdominal phantom, not on patients.** "
        "They make the demo fast and keep the tests meaningful; applied to any other volume they warn. "
        "For real scans use LiteMedSAM (the default), MedSAM/SAM checkpoints or your own models, and train "
        "a localizer on your labelled slices.",
        "",
        "## Segmenter: `tiny_sam.pt` (`load_segmenter(\"phantom\")`)",
        "",
        f"- Architecture: segment_anything `Sam` classes, image encoder ViT (embed {s['config']['embed_dim']}, "
        f"depth {s['config']['depth']}, {s['config']['num_heads']} heads, patch {s['config']['patch_size']}, "
        f"window attention {s['config']['window_size']} with global blocks {list(s['config']['global_attn_indexes'])}), "
        f"prompt and mask decoder width {s['config']['prompt_embed_dim']}; input {s['config']['image_size']} px; "
        f"{s.get('parameters', 0):,} parameters; {s.get('gflops_per_forward', 0):.3f} GFLOPs per forward "
        "(torch.utils.flop_counter).",
        f"- Preprocessing: {s.get('preprocessing')}. Box prompt in slice pixels, scaled like MedSAM's.",
        f"- Training data{' (last stage)' if st.get('previous') else ''}: phantom CT and MR, seeds "
        f"{_seeds(st.get('seeds'))}, {st.get('slices')} axial slices, "
        f"{st.get('organ_prompts')} organ prompts (every labelled organ), slices presented raw, windowed or "
        "enhanced.",
        *_segmenter_training(st),
        f"- Held-out evaluation (phantom seeds {_seeds(s.get('heldout', {}).get('seeds'))}, never used in training): "
        f"{s.get('heldout', {}).get('protocol')}.",
        f"- Test seeds {_seeds(list(TEST_SEEDS))}: never used for training nor for any training decision "
        "(the held-out seeds above chose the training settings); the test suite's score floors are checked there.",
        "",
        *_score_table(s.get("heldout", {}).get("dice", {}), organs),
        "",
        "## Localizer: `localizer.pt` (`load_localizer(\"default\")`, also `\"phantom\"`)",
        "",
        f"- {lc.get('model')}.",
        f"- CLIP: `{lc.get('clip')}` (an open_clip ViT config registered offline, trained from scratch here; "
        f"frozen: {lc.get('clip_frozen')}); patch tokens from blocks {lc.get('layers')}; {lc.get('n_ctx')} CoOp "
        f"context vectors; decoder width {lc.get('width')}; {lc.get('parameters', 0):,} parameters.",
        f"- Classes: {', '.join(lc.get('classes', []))}.",
        f"- Training data: phantom CT and MR, seeds {_seeds(lt.get('seeds'))}, {lt.get('slices')} slices.",
        f"- Training: `xaiclip train-localizer --out localizer.pt --clip {lc.get('clip')} --unfreeze-clip "
        f"--seeds {(lt.get('seeds') or [200])[0]}:{(lt.get('seeds') or [215])[-1] + 1} "
        f"--steps {lt.get('steps')} --batch {lt.get('batch')} --lr {lt.get('lr')} --seed {lt.get('seed')} "
        f"--threads {lt.get('torch_threads')}`; multi-class Dice + cross-entropy; {lt.get('seconds', 0) / 60:.0f} "
        "minutes on the CPU.",
        f"- Held-out evaluation (seeds {_seeds(lc.get('heldout', {}).get('seeds'))}): "
        f"{lc.get('heldout', {}).get('protocol')}.",
        f"- Test seeds {_seeds(list(TEST_SEEDS))}: never used for any training decision; the test suite checks "
        "its ROI Dice floor there.",
        "",
        "| organ | ROI Dice | slices |",
        "|---|---|---|",
    ]
    roi = lc.get("heldout", {}).get("roi_dice", {})
    for o in organs:
        v = roi.get(o)
        lines.append(f"| {o} | {v:.3f} | {roi.get('n_slices', {}).get(o, '?')} |" if isinstance(v, (int, float))
                     else f"| {o} | – | – |")
    lines.append("")
    return "\n".join(lines)
