"""An exponential moving average of a network's weights (image.ema): the averaged copy is what early stopping
evaluates and best.pt keeps. Averaging the last few hundred updates smooths out the noise of each one, which the
strong fine-tuning recipes (timm's, and the 0.90+ solutions of this competition) rely on."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EmaWeights:
    """e <- d_t * e + (1 - d_t) * w after update t (0-based), with d_t = min(decay, (1 + t) / (10 + t)).

    The warm-up of d_t lets the average forget its random or probed start within the first updates, however short
    the run: at update 0 it takes 90% of the new weights. Floating-point parameters and buffers are averaged; integer
    buffers (BatchNorm's batch count) are copied. Every rank of a DDP run holds the same weights after each update
    (gradients are averaged), so every rank holds the same average; BatchNorm statistics that differ per rank (gloo on
    the CPU) are averaged over the ranks with the network's own at each epoch's end.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    def decay_at(self, update: int) -> float:
        return min(self.decay, (1 + update) / (10 + update))

    def _pairs(self, net: nn.Module):
        mine, theirs = self.net.state_dict(), net.state_dict()
        return [(mine[k], theirs[k]) for k in mine]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        weight = 1 - self.decay_at(self.updates)
        pairs = self._pairs(net)
        floats = [(e, w) for e, w in pairs if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [w for _, w in floats], weight)
        for e, w in pairs:
            if not e.is_floating_point():
                e.copy_(w)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"weights": self.net.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["weights"])
        self.updates = state["updates"]
