"""CUDA checks: half precision, determinism per image, the engine end to end. Skipped without a GPU."""

import numpy as np
import pytest
import torch

from harmony_ops.loader import load_diffharmony
from harmony_ops.regions import finish, prepare
from harmony_ops.resolution import ResolutionPolicy

pytestmark = pytest.mark.gpu


def test_fp16_sampler_on_cuda_is_finite_and_batch_independent(tiny_checkpoint):
    engine = load_diffharmony(str(tiny_checkpoint), device="cuda")
    assert engine.sampler.dtype == torch.float16 and engine.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 128, 128, generator=g) * 2 - 1
    masks = (torch.rand(3, 1, 128, 128, generator=g) > 0.5).float()
    together = engine.sampler(images, masks, seeds=[1, 2, 3])
    alone = engine.sampler(images[1:2], masks[1:2], seeds=[2])
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=2e-2)


def test_engine_end_to_end_on_cuda(tiny_checkpoint, scene):
    comp, mask, _ = scene
    engine = load_diffharmony(str(tiny_checkpoint), device="cuda")
    m = (mask > 0).astype(np.float32)
    item = prepare(comp, m, ResolutionPolicy(mode="512"))
    out = finish(comp, m, item.plan.region, engine.run([item], [0]).regions[0])
    assert out.shape == comp.shape and np.array_equal(out[m < 0.5], comp[m < 0.5])
