"""Harmonization operations on tensors and arrays (torch, diffusers, OpenCV; no Ray)."""


def __getattr__(name):
    # Lazy, so that CPU-only users of harmony_ops (colour, masks, image IO) never import torch.
    if name == "ConditionVAE":
        from .condition_vae import ConditionVAE

        return ConditionVAE
    raise AttributeError(f"module 'harmony_ops' has no attribute {name!r}")


__all__ = ["ConditionVAE"]
