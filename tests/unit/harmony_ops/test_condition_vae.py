"""The Harmony-VAE equals the reference's decode_with_cond, loads released folders, and drives stage 1's decode."""

import json

import pytest
import torch
from diffusers import AutoencoderKL

from harmony_ops import ConditionVAE
from harmony_ops.factory import build_harmony_vae, build_vae
from harmony_ops.sampler import DiffHarmonySampler, generators_for

from .test_sampler import batch, parts, reference_pipeline  # noqa: F401 - fixtures reused


@torch.no_grad()
def reference_decode_with_cond(vae, z, cond, generator, sample_posterior=True):
    """An independent transcription of ConditionVAE.decode_with_cond (nicecv/DiffHarmony,
    src/models/condition_vae.py) with EncoderSkip.forward / DecoderSkip.forward (src/models/vae.py) and
    DownEncoderSkipBlock2D / UpDecoderSkipBlock2D (src/models/unet_2d_blocks.py), inference path."""
    enc = vae.conditional_encoder
    # EncoderSkip.forward
    sample = enc.add_conv_in(cond[:, 3:]) + enc.conv_in(cond[:, :3])
    down_block_res_samples = (sample,)
    for down_block in enc.down_blocks:  # DownEncoderSkipBlock2D.forward
        output_states = ()
        for resnet in down_block.resnets:
            sample = resnet(sample, temb=None)
            output_states = output_states + (sample,)
        if down_block.downsamplers is not None:
            for downsampler in down_block.downsamplers:
                sample = downsampler(sample)
                output_states = output_states + (sample,)
        down_block_res_samples += output_states
    sample = enc.mid_block(sample)
    mid_block_res_samples = sample.clone()
    sample = enc.conv_out(enc.conv_act(enc.conv_norm_out(sample)))
    down_block_res_samples = tuple(c(r) for r, c in zip(down_block_res_samples, enc.down_block_skip_convs))
    mid_block_res_samples = enc.mid_block_skip_conv(mid_block_res_samples)
    # decode_with_cond
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior_cond = DiagonalGaussianDistribution(vae.quant_conv(sample))
    z_cond = posterior_cond.sample(generator=generator) if sample_posterior else posterior_cond.mode()
    z = vae.post_quant_conv(z)
    z_cond = vae.post_quant_conv(z_cond)
    z = z + vae.latent_skip_conv(z_cond)
    # DecoderSkip.forward
    dec = vae.decoder
    sample = dec.conv_in(z)
    sample = dec.mid_block(sample, None)
    sample = sample + mid_block_res_samples
    for up_block in dec.up_blocks:
        res_samples = down_block_res_samples[-len(up_block.resnets):]
        down_block_res_samples = down_block_res_samples[: -len(up_block.resnets)]
        for resnet in up_block.resnets:  # UpDecoderSkipBlock2D.forward
            sample = resnet(sample, temb=None)
            sample = sample + res_samples[-1]
            res_samples = res_samples[:-1]
        if up_block.upsamplers is not None:
            for upsampler in up_block.upsamplers:
                sample = upsampler(sample)
    return dec.conv_out(dec.conv_act(dec.conv_norm_out(sample)))


@pytest.fixture(scope="module")
def hvae():
    return build_harmony_vae("tiny", seed=0).eval()


def _inputs(n=2, h=64, w=96):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(n, 4, h // 8, w // 8, generator=g)
    cond = torch.cat([torch.rand(n, 3, h, w, generator=g) * 2 - 1, (torch.rand(n, 1, h, w, generator=g) > 0.5).float()], 1)
    return z, cond


@pytest.mark.parametrize("sample_posterior", [True, False])
def test_decode_with_cond_equals_reference_transcription(hvae, sample_posterior):
    z, cond = _inputs()
    with torch.no_grad():
        ours = hvae.decode_with_cond(z, cond, generator=generators_for([1, 2]), sample_posterior=sample_posterior).sample
    ref = reference_decode_with_cond(hvae, z, cond, generators_for([1, 2]), sample_posterior)
    assert ours.shape == (2, 3, 64, 96)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # the condition is used: another composite decodes differently
    with torch.no_grad():
        other = hvae.decode_with_cond(z, cond.flip(-1), generator=generators_for([1, 2]), sample_posterior=sample_posterior).sample
    assert (other - ours).abs().mean() > 1e-3


def test_built_from_a_vae_it_encodes_and_decodes_as_that_vae():
    vae = build_vae("tiny", seed=3).eval()
    fresh = ConditionVAE.from_vae(vae).eval()  # zero skip convs, as the reference's training starts
    z, cond = _inputs()
    x = cond[:, :3]
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean, rtol=0, atol=0)
        torch.testing.assert_close(fresh.decode(z).sample, vae.decode(z).sample, rtol=0, atol=0)
        torch.testing.assert_close(fresh.decode_with_cond(z, cond).sample, vae.decode(z).sample, rtol=0, atol=1e-6)


def test_released_folder_loads_unchanged_with_the_reference_state_dict(hvae, tmp_path):
    hvae.save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == "ConditionVAE"
    # the keys a released condition_vae/config.json carries beyond the constructor's
    cfg.update(latents_mean=None, latents_std=None, shift_factor=None, use_quant_conv=True, use_post_quant_conv=True,
               mid_block_add_attention=True, _name_or_path="checkpoints/condition_vae")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = ConditionVAE.from_pretrained(str(tmp_path))
    keys = loaded.state_dict()
    # the reference's module names: the AutoencoderKL's own parts, plus the conditional encoder's extras
    vae_keys = set(AutoencoderKL(**{k: cfg[k] for k in ("down_block_types", "up_block_types", "block_out_channels",
                                                        "layers_per_block", "norm_num_groups", "latent_channels")}).state_dict())
    assert vae_keys <= set(keys)
    n_blocks, layers = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    skips = {k.split(".")[2] for k in keys if k.startswith("conditional_encoder.down_block_skip_convs.")}
    assert len(skips) == n_blocks * (layers + 1)  # conv_in's output, each resnet's, each downsampler's
    assert keys["conditional_encoder.add_conv_in.weight"].shape[1] == 1
    assert {"latent_skip_conv.weight", "conditional_encoder.mid_block_skip_conv.weight"} <= set(keys)
    extra = set(keys) - vae_keys
    assert all(k.startswith(("conditional_encoder.", "latent_skip_conv.")) for k in extra)
    for k, v in hvae.state_dict().items():
        assert torch.equal(keys[k], v), k


def test_sampler_with_harmony_vae_equals_the_reference_pipeline(parts, batch, hvae):  # noqa: F811
    """The reference pipeline with a ConditionVAE as its VAE: it encodes the composite, and its posterior
    draw in decode_with_cond comes after every other draw of the image's generator."""
    from diffusers import EulerAncestralDiscreteScheduler

    unet, _, sched_cfg, emb = parts
    images, masks = batch
    n = images.shape[0]
    seeds = [31, 32, 33]
    ours = DiffHarmonySampler(unet, hvae, sched_cfg, emb, harmony_vae=hvae)(images, masks, seeds=seeds, num_inference_steps=3)
    ref = reference_pipeline(unet, hvae, EulerAncestralDiscreteScheduler.from_config(sched_cfg), images, masks,
                             emb.expand(n, -1, -1), generators_for(seeds), None, 3, decode_with_cond=reference_decode_with_cond)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    plain = DiffHarmonySampler(unet, hvae, sched_cfg, emb)(images, masks, seeds=seeds, num_inference_steps=3)
    assert (plain - ours).abs().mean() > 1e-3  # the conditional decode is not the plain one
