"""Model card of the embedded model: `README.md` (for people) and `card.json` (for tests and tools) in the folder."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

FLOORS = {
    "geneval_overall": 0.50,
    "single_object": 0.80,
    "colors": 0.70,
    "vqa": 0.80,
    "edit": 0.50,
    "think": 0.50,
}


def card_world(model_dir: str | Path) -> Any | None:
    """The shapes world (a ShapesConfig) a model was trained on, read from its card.json; None without a card."""
    from internvlu.embedded.recipe import WorldSettings
    from internvlu.synthesis.shapes_scene import BACKGROUNDS

    path = Path(model_dir) / "card.json"
    if not path.is_file():
        return None
    try:
        world = dict(json.loads(path.read_text(encoding="utf-8"))["data"]["world"])
        # Cards written before session 8 lack the edit-scene fields: their edit sources used the whole world.
        world.setdefault("edit_max_objects", 4)
        world.setdefault("edit_backgrounds", list(BACKGROUNDS))
        # ... and cards before session 9 the edit layout: objects anywhere.
        world.setdefault("edit_layout", "random")
        return WorldSettings(**world).shapes_config()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: data.world is not a valid shapes world ({exc})") from exc


def _decoder_note(card: dict[str, Any]) -> str:
    if card.get("vae_decoder_psnr_db") is None:
        return ""
    return (
        f" -> decoder fine-tuned on noisy latents ({card['vae_decoder_psnr_db']} dB clean, "
        f"{card['vae_decoder_noisy_psnr_db']} dB with latent noise 0.3)"
    )


def _vit_pretrain(step: dict[str, Any]) -> dict[str, Any] | None:
    if "shape_acc_objects" not in step:
        return None
    return {k: step[k] for k in ("step", "shape_acc_objects", "color_acc_objects", "bg_acc")}


def _vit_note(card: dict[str, Any]) -> str:
    vit = card.get("vit_pretrain")
    if not vit:
        return ""
    return (
        f" -> InternViT dense pre-training ({vit['step']} steps; held-out patches: shape "
        f"{_pct(vit['shape_acc_objects'])}%, colour {_pct(vit['color_acc_objects'])}%)"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_model_card(
    model_dir: Path, cfg: Any, timeline: dict[str, Any], scores: dict[str, Any]
) -> dict[str, Any]:
    """Write README.md + card.json into `model_dir`; returns the card dict.

    Args:
        cfg: the ShapesTinyConfig that produced the model (recorded in full).
        timeline: the recipe's timeline.json (minutes per step, the score-vs-minutes curve).
        scores: `evaluate_shapes` output of the final model.
    """
    from internvlu.embedded.recipe import config_to_dict, folder_size_mb

    steps = timeline["steps"]
    g = scores["geneval"]
    card = {
        "name": "internvlu shapes-tiny",
        "recipe": "shapes-tiny",
        "seed": cfg.seed,
        "command": f"internvlu train --recipe shapes-tiny output_dir=runs/shapes-tiny seed={cfg.seed}",
        "training_minutes": round(sum(v["minutes"] for v in steps.values()), 2),
        "minutes_per_step": {k: v["minutes"] for k, v in steps.items()},
        "machine": {
            "cpu_threads": cfg.num_threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "data": {
            "generator": "shapes",
            "num_samples": cfg.synth.num_samples,
            "world": config_to_dict(cfg.world),
        },
        "vae_psnr_db": steps.get("vae", {}).get("psnr"),
        # After the decoder's noisy-latent fine-tune (None when skipped): clean PSNR and PSNR with latent noise 0.3.
        "vae_decoder_psnr_db": steps.get("decoder", {}).get("psnr"),
        "vae_decoder_noisy_psnr_db": steps.get("decoder", {}).get("psnr_noise_0.3"),
        # The ViT's dense pre-training (None when skipped): per-patch accuracy on held-out scenes.
        "vit_pretrain": _vit_pretrain(steps.get("vision", {})),
        "params": steps.get("init", {}).get("params"),
        "size_mb": folder_size_mb(model_dir),
        "scores": {
            "num": scores["num"],
            "seed": scores["seed"],
            "geneval": g,
            "vqa": scores["vqa"],
            "edit": scores["edit"],
            "think": scores["think"],
            "think_off": scores["think_off"],
            "vqa_by_family": scores["vqa_by_family"],
            "edit_by_op": scores["edit_by_op"],
            "think_by_kind": scores["think_by_kind"],
            "settings": {k: v for k, v in scores["settings"].items() if k != "shapes_config"},
        },
        "curve": timeline.get("curve", []),
        "config": config_to_dict(cfg),
    }
    rows = [
        ("GenEval overall", g["overall"], "geneval_overall"), ("single object", g["single_object"], "single_object"),
        ("two objects", g["two_object"], None), ("counting", g["counting"], None), ("colours", g["colors"], "colors"),
        ("position", g["position"], None), ("colour attribution", g["color_attr"], None),
        ("understanding (vqa)", scores["vqa"], "vqa"), ("editing", scores["edit"], "edit"),
        ("think", scores["think"], "think"), ("think off (same prompts)", scores["think_off"], None),
    ]  # fmt: skip
    missed = [name for name, v, key in rows if key and v < FLOORS[key]]
    card["floors_met"] = not missed and scores["think"] > scores["think_off"]
    (model_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    curve = "\n".join(
        f"| {p['after']} | {p['minutes']:.1f} | {_pct(p['geneval_overall'])} | {_pct(p['vqa'])} | {_pct(p['edit'])} | "
        f"{_pct(p['think'])} |"
        for p in card["curve"]
    )
    text = (
        f"""# internvlu shapes-tiny

A tiny InternVL-U (InternViT + Qwen3 + MMDiT head + Qwen-Image VAE, the release's classes and on-disk layout),
trained from scratch by `internvlu train --recipe shapes-tiny` on the synthetic shapes world. It is the model the
CLI, server and web UI use when no `--model` is given. It knows only the shapes world ({card["data"]["world"]["image_size"]} px
images of coloured circles, squares, triangles, diamonds and stars on plain backgrounds, with short words).

- Data: {cfg.synth.num_samples} synthetic samples (`internvlu synth shapes`, seed {cfg.seed}), task weights
  understanding:t2i:edit:think = {":".join(str(w) for w in cfg.synth.task_weights)}.
- Recipe: tokenizer (byte-level BPE, {cfg.tokenizer.vocab_size} merges + special tokens) -> VAE
  (PSNR {card["vae_psnr_db"]} dB on held-out images){_decoder_note(card)}{_vit_note(card)} -> understanding pre-training (NTP) -> generation head (MLLM
  frozen, flow matching) -> edit-heavy continued head training -> unified stage (everything, NTP:flow {cfg.unified.ntp_weight:g}:{cfg.unified.flow_weight:g}).
- Seed: {cfg.seed}. Training time: {card["training_minutes"]:.1f} min on {cfg.num_threads} CPU threads
  (including synthesis and the final evaluation). Size: {card["size_mb"]} MB ({cfg.export_dtype}).
- Reproduce: `{card["command"]}`

## Scores (`internvlu eval shapes`, {scores["num"]} fresh prompts per category, seed {scores["seed"]})

{"All floors of issue 8 are met." if card["floors_met"] else "Below the floors of issue 8 (target column) on: "
 + ", ".join(missed or ["think vs think off"]) + "."}

| metric | % | floor (issue 8) |
|---|---|---|
"""
        + "\n".join(f"| {name} | {_pct(v)} | {_pct(FLOORS[key]) if key else ''} |" for name, v, key in rows)
        + f"""

## Training curve (small evaluations after each stage)

| after | minutes | GenEval overall | vqa | edit | think |
|---|---|---|---|---|---|
{curve}

Minutes per step: {json.dumps(card["minutes_per_step"])}
"""
    )
    (model_dir / "README.md").write_text(text, encoding="utf-8")
    return card
