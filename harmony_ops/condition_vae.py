"""The DiffHarmony++ Harmony-VAE: an SD VAE whose decoder also sees the full-resolution composite.

Numerics and parameter names follow the reference (nicecv/DiffHarmony, src/models/condition_vae.py,
src/models/vae.py, src/models/unet_2d_blocks.py) so released `condition_vae/` folders load unchanged
and checkpoints saved here load in the reference:
- `encoder`, `decoder`, `quant_conv`, `post_quant_conv` are those of the `AutoencoderKL` it was
  built from, so `encode` / `decode` behave exactly as that VAE;
- `conditional_encoder` is a second encoder over [composite (3), mask (additional_in_channels)]
  (`add_conv_in` takes the extra channels); it returns its posterior plus every down-path activation
  and the mid-block output, each through a zero-initialised 1x1 conv (`down_block_skip_convs`,
  `mid_block_skip_conv`);
- `decode_with_cond` adds `latent_skip_conv(post_quant_conv(z_cond))` to the latents and the skip
  activations to the decoder's mid block and to each up-block resnet output, deepest first.
The zero-initialised convs make a freshly built Harmony-VAE decode exactly like its base VAE.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

# Keys a released condition_vae/config.json carries (written by newer diffusers' AutoencoderKL) that
# this constructor, like the reference's, does not take; they change nothing here.
IGNORED_CONFIG_KEYS = ("latents_mean", "latents_std", "shift_factor", "use_quant_conv", "use_post_quant_conv",
                       "mid_block_add_attention", "_name_or_path")


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditionalEncoder(Encoder):
    """diffusers' VAE `Encoder` plus the reference's extra input conv and skip convs."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types, block_out_channels, layers_per_block: int,
                 norm_num_groups: int, act_fn: str, additional_in_channels: int):
        super().__init__(in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
                         block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                         norm_num_groups=norm_num_groups, act_fn=act_fn, double_z=True)
        self.in_channels = in_channels
        self.additional_in_channels = additional_in_channels
        if additional_in_channels > 0:
            self.add_conv_in = nn.Conv2d(additional_in_channels, block_out_channels[0], kernel_size=3, padding=1)
        # One conv per activation the down path yields, in order: conv_in's output, each resnet's,
        # each downsampler's. A downsampler's conv maps to the next block's width, because the
        # decoder adds it where that width runs.
        skips = [_zero_conv(block_out_channels[0], block_out_channels[0])]
        for i, ch in enumerate(block_out_channels):
            skips += [_zero_conv(ch, ch) for _ in range(layers_per_block)]
            if i < len(block_out_channels) - 1:
                skips.append(_zero_conv(ch, block_out_channels[i + 1]))
        self.down_block_skip_convs = nn.ModuleList(skips)
        self.mid_block_skip_conv = _zero_conv(block_out_channels[-1], block_out_channels[-1])

    def forward(self, sample: torch.Tensor):
        x = self.conv_in(sample[:, : self.in_channels])
        if self.additional_in_channels > 0:
            x = x + self.add_conv_in(sample[:, self.in_channels :])
        states = [x]
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = resnet(x, temb=None)
                states.append(x)
            for down in block.downsamplers or ():
                x = down(x)
                states.append(x)
        x = self.mid_block(x)
        mid = self.mid_block_skip_conv(x)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x, tuple(conv(s) for conv, s in zip(self.down_block_skip_convs, states)), mid


def _decode_with_skips(decoder: Decoder, z: torch.Tensor, skips: tuple[torch.Tensor, ...], mid: torch.Tensor) -> torch.Tensor:
    x = decoder.conv_in(z)
    x = decoder.mid_block(x, None) + mid
    remaining = list(skips)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            x = resnet(x, temb=None) + remaining.pop()  # deepest activation first
        for up in block.upsamplers or ():
            x = up(x)
    return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))


class ConditionVAE(ModelMixin, ConfigMixin):
    """Harmony-VAE (DiffHarmony++). Same config, module names and state dict as the reference class."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        additional_in_channels: int = 1,
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
    ):
        super().__init__()
        if any(t != "DownEncoderBlock2D" for t in down_block_types) or any(t != "UpDecoderBlock2D" for t in up_block_types):
            raise ValueError("ConditionVAE supports DownEncoderBlock2D / UpDecoderBlock2D blocks only, as the reference")
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, act_fn=act_fn)
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
                               double_z=True, **common)
        self.conditional_encoder = ConditionalEncoder(in_channels, latent_channels, down_block_types,
                                                      additional_in_channels=additional_in_channels, **common)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types, **common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.latent_skip_conv = _zero_conv(latent_channels, latent_channels)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # Drop the released config's extra keys quietly: diffusers would warn about each on every load.
        config_dict = {k: v for k, v in config_dict.items() if k not in IGNORED_CONFIG_KEYS}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_vae(cls, vae, additional_in_channels: int = 1) -> "ConditionVAE":
        """A Harmony-VAE initialised from an `AutoencoderKL`, as the reference's training starts:
        its weights copied into encoder, decoder, the quant convs and the conditional encoder."""
        keep = {k: v for k, v in vae.config.items() if k in cls._init_keys()}
        model = cls(**keep, additional_in_channels=additional_in_channels)
        for name in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
            getattr(model, name).load_state_dict(getattr(vae, name).state_dict())
        for name in ("conv_in", "down_blocks", "mid_block", "conv_norm_out", "conv_out"):
            getattr(model.conditional_encoder, name).load_state_dict(getattr(vae.encoder, name).state_dict())
        return model

    @classmethod
    def _init_keys(cls) -> set[str]:
        import inspect

        return set(inspect.signature(cls.__init__).parameters) - {"self"}

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = DiagonalGaussianDistribution(self.quant_conv(self.encoder(x.to(self.device, self.dtype))))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def encode_cond(self, cond: torch.Tensor):
        """(posterior, skip activations, mid-block skip) of the conditional encoder."""
        h, skips, mid = self.conditional_encoder(cond.to(self.device, self.dtype))
        return DiagonalGaussianDistribution(self.quant_conv(h)), skips, mid

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        dec = self.decoder(self.post_quant_conv(z.to(self.device, self.dtype)))
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def decode_with_cond(self, z: torch.Tensor, cond: torch.Tensor, generator=None, sample_posterior: bool = True,
                         return_dict: bool = True):
        """Decode latents with the composite's help.

        z: latents / scaling_factor; cond: [composite in [-1, 1] (3), binary mask (1)] at full resolution,
        the composite unmasked. With `sample_posterior`, the conditional posterior is sampled with
        `generator` (one generator or one per image), else its mode is used. Returns the image in [-1, 1].
        """
        z = z.to(self.device, self.dtype)
        posterior, skips, mid = self.encode_cond(cond)
        z_cond = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        z = self.post_quant_conv(z) + self.latent_skip_conv(self.post_quant_conv(z_cond))
        dec = _decode_with_skips(self.decoder, z, skips, mid)
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True, generator=None,
                cond: torch.Tensor | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        if cond is None:
            return self.decode(z, return_dict=return_dict)
        return self.decode_with_cond(z, cond, generator=generator, sample_posterior=sample_posterior, return_dict=return_dict)
