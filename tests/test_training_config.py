"""Training configuration: recipes (paper values), strict dotted overrides, LR schedule, the `train` CLI front."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from internvlu.training.cli import add_train_parser, resolve_config, run_train
from internvlu.training.config import TrainConfig, apply_overrides, parse_value
from internvlu.training.recipes import get_recipe, list_recipes
from internvlu.training.trainer import lr_at


def test_stage_recipes_carry_the_paper_values() -> None:
    s1, s2, s3 = get_recipe("stage1"), get_recipe("stage2"), get_recipe("stage3")
    assert s1.model.trainable == ["generation_decoder"] and s2.model.trainable == ["generation_decoder"]
    assert s3.model.trainable == ["vlm", "generation_decoder"]
    assert s1.data.task_weights == {"t2i": 4.0, "edit": 1.0}
    assert s2.data.task_weights == {"t2i": 3.0, "edit": 4.0}
    assert s3.data.task_weights == {"t2i": 1.0, "edit": 1.0, "understanding": 2.0, "think": 1.0}
    assert (s1.optim.lr, s1.optim.schedule, s1.optim.clip_grad_norm, s1.optim.weight_decay) == (
        3e-4,
        "constant",
        0.2,
        0.0,
    )
    assert (s2.optim.lr, s2.optim.schedule, s2.optim.clip_grad_norm) == (1e-4, "cosine", 0.2)
    assert (s3.optim.lr, s3.optim.schedule, s3.optim.clip_grad_norm, s3.optim.weight_decay) == (
        1e-5,
        "cosine",
        1.0,
        0.01,
    )
    assert all(c.optim.warmup_steps == 1000 and c.optim.betas == [0.9, 0.999] for c in (s1, s2, s3))
    assert (s1.loss.ntp_weight, s1.loss.flow_weight) == (0.0, 1.0)
    assert (s3.loss.ntp_weight, s3.loss.flow_weight) == (1.0, 20.0)
    assert all(
        c.loss.flow_shift == 3.0 and c.loss.logit_mean == 0.0 and c.loss.logit_std == 1.0
        for c in (s1, s2, s3)
    )
    assert s1.data.resolution.mode == "fixed" and s1.data.resolution.size == 512
    res = s2.data.resolution
    assert (res.mode, min(res.levels), max(res.levels), res.min_aspect, res.max_aspect) == (
        "buckets",
        512,
        1024,
        0.5,
        2.0,
    )
    assert not s1.data.use_reference_latents and s2.data.use_reference_latents
    d = s1.data.drop
    assert (d.t2i_all, d.edit_all, d.edit_text) == (0.10, 0.05, 0.05)
    assert (s1.train.steps, s1.train.global_batch_size) == (250_000, 2048)
    assert (s3.train.steps, s3.train.global_batch_size) == (20_000, 1024)


def test_every_stage_has_a_tiny_variant_that_validates() -> None:
    names = list_recipes()
    for stage in ("stage1", "stage2", "stage3", "stage3-lora"):
        assert stage in names and f"{stage}-tiny" in names
        tiny = get_recipe(f"{stage}-tiny").validate()
        full = get_recipe(stage)
        assert tiny.model.init == "fresh" and tiny.train.dtype == "float32"
        # The tiny variant keeps the recipe's structure: what trains, mixture, loss weights.
        assert tiny.model.trainable == full.model.trainable and tiny.lora.targets == full.lora.targets
        assert tiny.data.task_weights == full.data.task_weights
        assert (tiny.loss.ntp_weight, tiny.loss.flow_weight) == (full.loss.ntp_weight, full.loss.flow_weight)
    with pytest.raises(ValueError, match="model.path"):
        get_recipe("stage1").validate()  # full stages need a checkpoint
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_overrides_are_typed_and_strict() -> None:
    cfg = resolve_config(
        "tiny",
        ["optim.lr=5e-4", "data.sources=[a.jsonl,b.tar]", "model.arch.dit_layers=4", "train.max_minutes=1.5",
         'data.task_weights={"t2i": 1}', "lora.targets=[dit]", "checkpoint.resume=never", "output_dir=runs/x"],
    )  # fmt: skip
    assert cfg.optim.lr == 5e-4 and cfg.data.sources == ["a.jsonl", "b.tar"]
    assert cfg.model.arch.dit_layers == 4 and cfg.train.max_minutes == 1.5 and cfg.lora.targets == ["dit"]
    mid = resolve_config("tiny", ["model.arch=mid"])
    assert mid.model.arch.llm_hidden == 512
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        resolve_config("tiny", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="train.steps must be an integer"):
        resolve_config("tiny", ["train.steps=ten"])
    with pytest.raises(ValueError, match="must be one of"):
        resolve_config("tiny", ["optim.schedule=linear"])
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        resolve_config("tiny", ["model.arch=huge"])
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides(TrainConfig(), ["no-equals-sign"])
    with pytest.raises(ValueError, match="multiple of micro_batch_size|sum to dit_head_dim"):
        resolve_config("tiny", ["model.arch.dit_axes_rope=[8,8,8]"])
    assert parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc" and parse_value("null") is None


def test_config_json_round_trip() -> None:
    cfg = resolve_config("stage3-lora-tiny", ["optim.lr=1e-4"])
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({**cfg.to_dict(), "typo": 1})


def test_lr_schedule_warmup_constant_and_cosine() -> None:
    assert [lr_at(s, 100, 1.0, 4, "constant", 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(4, 104, 1.0, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_at(54, 104, 1.0, 4, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_at(104, 104, 1.0, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert all(math.isfinite(lr_at(s, 10, 1e-3, 0, "cosine", 0.0)) for s in range(12))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="internvlu")
    add_train_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def test_cli_lists_recipes_and_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_train(_parse(["--list"])) == 0
    listing = capsys.readouterr().out
    assert "stage1-tiny" in listing and "stage3" in listing
    assert run_train(_parse(["--recipe", "tiny", "optim.lr=1e-4", "--print-config"])) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-4 and printed["name"] == "tiny"
    with pytest.raises(ValueError, match="--recipe"):
        run_train(_parse([]))
