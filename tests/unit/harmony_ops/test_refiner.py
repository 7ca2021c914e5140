"""The refiner matches DiffHarmony's UNet2DCustom: same module names, shapes and outputs.

tests/fixtures/reference_refiner.json was produced by the reference repository's own
class (src/models/unet_2d.py) for two configs: every parameter filled by a fixed formula
of its sorted key index, a fixed input, and the output it gave.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harmony_ops.refiner import UNet2DCustom, make_refiner_input

FIXTURE = json.loads((Path(__file__).parents[2] / "fixtures" / "reference_refiner.json").read_text())


def formula_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    out = {}
    for i, k in enumerate(sorted(shapes)):
        n = 1
        for s in shapes[k]:
            n *= s
        v = torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + i) * 0.05
        out[k] = v.reshape(shapes[k]).to(torch.float32).contiguous()
    return out


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_reference_checkpoint_loads_unchanged_and_gives_identical_output(name, tmp_path):
    ref = FIXTURE[name]
    # Write the checkpoint exactly as the reference class saves it: its class name, its keys.
    ckpt = tmp_path / name
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"_class_name": "UNet2DCustom", "_diffusers_version": "0.25.0", **ref["config"]}))
    save_file(formula_state_dict(ref["state_dict_shapes"]), str(ckpt / "diffusion_pytorch_model.safetensors"))

    model = UNet2DCustom.from_pretrained(str(ckpt), use_safetensors=True).eval()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_dict_shapes"]

    c = ref["config"]["in_channels"]
    x = torch.cos(torch.arange(c * 32 * 32, dtype=torch.float64) * 0.013).reshape(1, c, 32, 32).to(torch.float32)
    with torch.no_grad():
        y = model(x).sample.flatten()
    expected = torch.tensor(ref["output"], dtype=torch.float32)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=2e-5)


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
