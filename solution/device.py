"""Where tensors live and in which precision: the device a run trains on, its autocast dtype, and moving a
batch there. Shared by the training loop (trainer.py), the update rules (recipe/) and the benchmarks."""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but torch sees no CUDA GPU; use device=auto or device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def training_device(cfg) -> torch.device:
    """The device to train on; on CUDA, cuDNN times its kernels once per input shape (batches keep theirs)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, fp16 (with a grad scaler) on older ones, full precision on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def uses_channels_last(net: torch.nn.Module, device: torch.device) -> bool:
    """Image networks say channels_last = True; the layout pays off on CUDA only."""
    return device.type == "cuda" and getattr(net, "channels_last", False)


def to_device(inputs, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    """A batch's inputs on the device, 4-d ones (images) in channels_last when asked."""
    out = []
    for x in inputs:
        x = x.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x)
    return out
