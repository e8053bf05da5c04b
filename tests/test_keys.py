"""The full-size module tree (built on the meta device) has exactly the 1,506 keys and shapes of the 4B release."""

from __future__ import annotations

import json
from pathlib import Path

from internvlu.presets import build_components, mid, released

SPEC = json.loads((Path(__file__).parent / "data" / "parity" / "full-size-keys.json").read_text())


def test_released_preset_has_every_official_key_and_shape():
    vlm, decoder, vae = build_components(released())
    total_tensors, total_params = 0, 0
    for name, module in (("vlm", vlm), ("generation_decoder", decoder), ("vae", vae)):
        expected = {k: list(shape) for k, shape in SPEC["components"][name]["keys"]}
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == expected, name
        params = sum(p.numel() for p in module.parameters())
        assert params == SPEC["components"][name]["num_params"], name
        total_tensors += len(ours)
        total_params += params
    assert total_tensors == SPEC["total_num_tensors"] == 1506
    assert total_params == SPEC["total_num_params"]


def test_mid_preset_is_about_half_a_billion():
    vlm, decoder, vae = build_components(mid())
    total = sum(p.numel() for m in (vlm, decoder) for p in m.parameters())
    assert 0.3e9 < total < 0.8e9, total
