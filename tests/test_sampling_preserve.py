"""The edit-preserving sampler pieces (internvlu.sampling.preserve) and their use in `denoise`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from internvlu.sampling.denoise import denoise
from internvlu.sampling.preserve import PreserveSettings, SourceBlend, change_mask


def _region() -> torch.Tensor:
    """Row 0 changes in a 2x2 block at (2..3, 5..6), row 1 in one pixel at (6, 1)."""
    m = torch.zeros(2, 1, 8, 8)
    m[0, 0, 2:4, 5:7] = 1
    m[1, 0, 6, 1] = 1
    return m


def _pull_only_in(region: torch.Tensor, seen: list | None = None):
    """A velocity model whose text row differs from the text-dropped row only inside `region` (plus a weak
    pull elsewhere, below any sensible threshold)."""

    def rows(x, t, count):
        if seen is not None:
            seen.append((x.clone(), float(t), count))
        v_p = 0.5 * x
        v_c = v_p + 4.0 * region + 0.05  # [N, C, H, W] + [N, 1, H, W]
        return (v_c, v_p, torch.zeros_like(x))[:count]

    return rows


def test_change_mask_finds_where_the_text_pulls_and_grows_it():
    torch.manual_seed(0)
    source = torch.randn(2, 4, 8, 8)
    noises = [torch.randn_like(source) for _ in range(2)]
    seen: list = []
    region = _region()
    pull = PreserveSettings(method="pull", strength=0.9)
    mask = change_mask(_pull_only_in(region, seen), source, noises, dataclasses.replace(pull, dilate=0))
    assert mask.shape == (2, 1, 8, 8)
    assert torch.equal(mask, region)
    # The model saw the source noised to `strength` along each draw, at timestep strength * 1000, and was asked
    # for the two rows the pull compares only.
    assert len(seen) == 2
    for (x, t, count), noise in zip(seen, noises):
        assert t == pytest.approx(900.0) and count == 2
        assert torch.allclose(x, 0.1 * source + 0.9 * noise)
    grown = change_mask(_pull_only_in(region), source, noises, dataclasses.replace(pull, dilate=1))
    assert grown[0, 0, 1:5, 4:8].sum() == 16 and grown[0].sum() == 16  # the 2x2 block grown to 4x4
    assert grown[1, 0, 5:8, 0:3].sum() == 9 and grown[1].sum() == 9
    # A threshold below the weak background pull keeps everything (nothing is preserved).
    everything = change_mask(
        _pull_only_in(region), source, noises, dataclasses.replace(pull, threshold=0.0, dilate=0)
    )
    assert everything.min() == 1


def test_x0_change_mask_finds_where_the_predicted_image_leaves_the_source():
    torch.manual_seed(3)
    source = torch.randn(2, 4, 8, 8)
    noises = [torch.randn_like(source) for _ in range(2)]
    region = _region()
    seen: list = []

    def rows(x, t, count):
        # The text row predicts a clean image that differs from the source only inside `region`; the
        # text-dropped row pulls everywhere (so the "pull" method could not localise anything here).
        seen.append((float(t), count))
        s = float(t) / 1000
        target = source + 3.0 * region
        v_c = (x - target) / s  # x - s * v_c = target
        return (v_c, v_c + 5.0, torch.zeros_like(x))[:count]

    settings = PreserveSettings(dilate=0)  # the default method, "x0", at strength 0.95
    mask = change_mask(rows, source, noises, settings)
    assert torch.equal(mask, region)
    assert seen == [(pytest.approx(950.0), 1)] * 2  # only the conditional row is run
    pulled = change_mask(rows, source, noises, PreserveSettings(method="pull", dilate=0))
    assert pulled.min() == 1  # the uniform pull of the other row marks everything


def test_change_mask_checks_the_number_of_draws():
    source = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="needs 2 noise draws, got 1"):
        change_mask(_pull_only_in(_region()[:1]), source, [source], PreserveSettings())


def test_blend_keeps_the_source_path_outside_the_mask():
    torch.manual_seed(1)
    latents, source, noise = torch.randn(3, 2, 4, 8, 8).unbind(0)
    mask = _region()
    blend = SourceBlend(mask, source, noise)
    out = blend.apply(latents, 0.25)
    inside, outside = mask.expand_as(out).bool(), ~mask.expand_as(out).bool()
    assert torch.equal(out[inside], latents[inside])
    assert torch.allclose(out[outside], (0.75 * source + 0.25 * noise)[outside])
    assert torch.equal(blend.apply(latents, 0.0)[outside], source[outside])


def test_denoise_with_a_blend_ends_on_the_source_outside_the_mask():
    torch.manual_seed(2)
    source = torch.randn(2, 4, 8, 8)
    noise = torch.randn_like(source)
    mask = _region()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(6)

    def velocity(x, t):
        v = torch.ones_like(x)  # drifts every pixel away from the source
        return v, v, v

    blended = denoise(velocity, scheduler, noise.clone(), 3.0, 1.5, blend=SourceBlend(mask, source, noise))
    outside = ~mask.expand_as(blended).bool()
    assert torch.allclose(blended[outside], source[outside], atol=1e-6)
    scheduler.set_timesteps(6)
    free = denoise(velocity, scheduler, noise.clone(), 3.0, 1.5)
    inside = mask.expand_as(blended).bool()
    assert torch.allclose(blended[inside], free[inside], atol=1e-6)  # Euler: inside follows the model alone
    assert not torch.allclose(free[outside], source[outside], atol=1e-2)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"method": "attention"}, "method must be one of \\['pull', 'x0'\\], got 'attention'"),
        ({"strength": 0.0}, "strength must be in \\(0, 1\\], got 0.0"),
        ({"strength": 1.5}, "strength must be in \\(0, 1\\], got 1.5"),
        ({"draws": 0}, "draws must be a positive int, got 0"),
        ({"draws": 2.0}, "draws must be a positive int, got 2.0"),
        ({"threshold": 1.0}, "threshold must be in \\[0, 1\\), got 1.0"),
        ({"threshold": True}, "threshold must be in \\[0, 1\\), got True"),
        ({"dilate": -1}, "dilate must be a non-negative int, got -1"),
    ],
)
def test_preserve_settings_name_the_bad_value(kw, message):
    with pytest.raises(ValueError, match=message):
        PreserveSettings(**kw)
