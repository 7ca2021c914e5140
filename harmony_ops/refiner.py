"""Stage-2 refinement U-Net of DiffHarmony.

The released refinement checkpoints carry `"_class_name": "UNet2DCustom"` in their
config.json and a state dict whose keys follow the module names below. The class keeps
that name and that module layout so those checkpoints load unchanged
(`UNet2DCustom.from_pretrained(dir)`) and checkpoints saved here load in the
reference code. It is diffusers' UNet2DModel without the time embedding, plus an
optional residual from the first `out_channels` input channels (the harmonized image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from diffusers.utils import BaseOutput


@dataclass
class RefinerOutput(BaseOutput):
    sample: torch.Tensor


class UNet2DCustom(ModelMixin, ConfigMixin):
    """Refinement U-Net. Input channels: harmonized (3) [+ mask (1) [+ composite (3)]], in [-1, 1]."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        input_residual: bool = False,
    ):
        super().__init__()
        if len(down_block_types) != len(up_block_types):
            raise ValueError(f"down_block_types {down_block_types} and up_block_types {up_block_types} differ in length")
        if len(block_out_channels) != len(down_block_types):
            raise ValueError(f"block_out_channels {block_out_channels} does not match down_block_types {down_block_types}")
        if in_channels not in (3, 4, 7):
            raise ValueError(f"in_channels must be 3, 4 or 7 (harmonized[, mask[, composite]]), got {in_channels}")
        self.sample_size = sample_size
        self.input_residual = input_residual

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=(1, 1))
        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])

        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            is_final = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=None,
                    add_downsample=not is_final,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim if attention_head_dim is not None else output_channel,
                    downsample_padding=downsample_padding,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    downsample_type=downsample_type,
                )
            )

        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            temb_channels=None,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift,
            attention_head_dim=attention_head_dim if attention_head_dim is not None else block_out_channels[-1],
            resnet_groups=norm_num_groups,
            add_attention=add_attention,
        )

        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, len(block_out_channels) - 1)]
            is_final = i == len(block_out_channels) - 1
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=layers_per_block + 1,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    prev_output_channel=prev_output_channel,
                    temb_channels=None,
                    add_upsample=not is_final,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim if attention_head_dim is not None else output_channel,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    upsample_type=upsample_type,
                )
            )

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    @property
    def downsample_factor(self) -> int:
        """Spatial sizes must be multiples of this (one halving per down block but the last)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> RefinerOutput | tuple[torch.Tensor]:
        skip = sample[:, : self.config.out_channels].clone() if self.input_residual else None
        sample = self.conv_in(sample)
        residuals: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            sample, res = block(hidden_states=sample, temb=None)
            residuals += res
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            res = residuals[-len(block.resnets) :]
            residuals = residuals[: -len(block.resnets)]
            sample = block(sample, res, None)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if skip is not None:
            sample = sample + skip
        if not return_dict:
            return (sample,)
        return RefinerOutput(sample=sample)


def make_refiner_input(harmonized: torch.Tensor, mask: torch.Tensor, composite: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stack the refiner's input in the order its checkpoints were trained on: harmonized, mask, composite.

    All image tensors are NCHW in [-1, 1]; the mask is N1HW in {0, 1}.
    """
    if in_channels == 3:
        return harmonized
    if in_channels == 4:
        return torch.cat([harmonized, mask.to(harmonized)], dim=1)
    if in_channels == 7:
        return torch.cat([harmonized, mask.to(harmonized), composite.to(harmonized)], dim=1)
    raise ValueError(f"unsupported refiner in_channels {in_channels}")
