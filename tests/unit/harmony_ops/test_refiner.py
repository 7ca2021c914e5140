"""The refiner matches DiffHarmony's UNet2DCustom: same module names, shapes and outputs.

tests/fixtures/reference_refiner.json was produced by running the reference repository's own
class (nicecv/DiffHarmony, src/models/unet_2d.py) for two configs, with the weights of
`seeded_state_dict` and the input of `seeded_input` below: per config its keys and shapes, the
two seeds, and the output minus the input residual. The weights have PyTorch's default scales
(conv/linear weights and biases uniform in +-1/sqrt(fan_in), norm scales and shifts around 1
and 0), so attention is far from uniform and every part of the network moves the output: a
class with a wrong attention head split (down, up or mid block) or a wrong mid-block scale gives
outputs more than 1e-2 away, a thousand times the tolerance. The comparison is on the output
minus the input residual, so the tolerance is measured against what the network computes, not
against the input it passes through.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harmony_ops.refiner import UNet2DCustom, make_refiner_input

FIXTURE = json.loads((Path(__file__).parents[2] / "fixtures" / "reference_refiner.json").read_text())


def seeded_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Weights at PyTorch's default init scales, drawn from one generator in sorted-key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(shapes):
        layer_weight = shapes.get(k.rsplit(".", 1)[0] + ".weight", shapes[k])
        if len(layer_weight) >= 2:  # conv / linear weight or bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(math.prod(layer_weight[1:]))
            v = (torch.rand(shapes[k], generator=g, dtype=torch.float64) * 2 - 1) * bound
        else:  # group norm: default scale 1, shift 0, plus noise
            v = (1.0 if k.endswith(".weight") else 0.0) + 0.2 * torch.randn(shapes[k], generator=g, dtype=torch.float64)
        out[k] = v.to(torch.float32).contiguous()
    return out


def seeded_input(in_channels: int, size: int, seed: int) -> torch.Tensor:
    """Image channels uniform in [-1, 1]; channel 3, the mask where there is one, a binary rectangle."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, in_channels, size, size, generator=g, dtype=torch.float64) * 2 - 1
    if in_channels >= 4:
        x[:, 3] = 0
        x[:, 3, size // 4 : size * 3 // 4 + 2, size // 8 : size * 5 // 8 + 1] = 1
    return x.to(torch.float32)


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_reference_checkpoint_loads_unchanged_and_gives_identical_output(name, tmp_path):
    ref = FIXTURE[name]
    # Write the checkpoint exactly as the reference class saves it: its class name, its keys.
    ckpt = tmp_path / name
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"_class_name": "UNet2DCustom", "_diffusers_version": "0.25.0", **ref["config"]}))
    save_file(seeded_state_dict(ref["state_dict_shapes"], ref["weight_seed"]), str(ckpt / "diffusion_pytorch_model.safetensors"))

    model = UNet2DCustom.from_pretrained(str(ckpt), use_safetensors=True).eval()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_dict_shapes"]

    x = seeded_input(ref["config"]["in_channels"], ref["input_size"], ref["input_seed"])
    with torch.no_grad():
        y = model(x).sample
    expected = torch.tensor(ref["output_minus_residual"], dtype=torch.float32)
    assert expected.abs().max() > 1  # the network's own contribution is not small next to the tolerance
    torch.testing.assert_close((y - x[:, :3]).flatten(), expected, rtol=1e-5, atol=1e-5)


def test_saved_checkpoint_names_the_reference_class(tmp_path):
    m = UNet2DCustom(in_channels=4, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                     up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, attention_head_dim=None, input_residual=True)
    m.save_pretrained(tmp_path / "r", safe_serialization=True)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["_class_name"] == "UNet2DCustom"
    assert cfg["input_residual"] is True
    again = UNet2DCustom.from_pretrained(str(tmp_path / "r"))
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_input_residual_adds_the_harmonized_channels():
    m = UNet2DCustom(in_channels=7, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                     up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, attention_head_dim=None, input_residual=True)
    torch.nn.init.zeros_(m.conv_out.weight)
    torch.nn.init.zeros_(m.conv_out.bias)
    x = torch.randn(2, 7, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x).sample, x[:, :3])


@pytest.mark.parametrize("in_channels", [3, 4, 7])
def test_factory_refiner_inits(in_channels):
    from harmony_ops.factory import REFINER_CONFIGS, build_refiner

    x = torch.rand(1, 7, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x[:, :in_channels]
    configs = dict(REFINER_CONFIGS["tiny"], in_channels=in_channels)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(REFINER_CONFIGS, "tiny", configs)
        identity, default = build_refiner("tiny", init="identity").eval(), build_refiner("tiny").eval()
        with pytest.raises(ValueError, match="refiner init"):
            build_refiner("tiny", init="zeros")
    with torch.no_grad():
        assert torch.equal(identity(x).sample, x[:, :3])  # zeroed conv_out: the harmonized channels, unchanged
        y = default(x).sample
        for c in range(in_channels):  # default init: every input channel moves the output
            x2 = x.clone()
            x2[:, c] = -x2[:, c]
            assert (default(x2).sample - y).abs().mean() > 0.1, c


def test_refiner_input_order_is_harmonized_mask_composite():
    harm, mask, comp = torch.full((1, 3, 4, 4), 0.5), torch.ones(1, 1, 4, 4), torch.full((1, 3, 4, 4), -0.5)
    assert make_refiner_input(harm, mask, comp, 3) is harm
    x4 = make_refiner_input(harm, mask, comp, 4)
    assert x4.shape[1] == 4 and torch.equal(x4[:, 3:], mask)
    x7 = make_refiner_input(harm, mask, comp, 7)
    assert torch.equal(x7[:, :3], harm) and torch.equal(x7[:, 3:4], mask) and torch.equal(x7[:, 4:], comp)
    with pytest.raises(ValueError):
        make_refiner_input(harm, mask, comp, 5)


def test_rejects_unsupported_channel_counts():
    with pytest.raises(ValueError, match="in_channels"):
        UNet2DCustom(in_channels=5)
