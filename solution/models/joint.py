"""`joint`: the image backbone and the caption Bi-LSTM trained together end to end, one head on both.

Unlike `fusion`, which stacks a head on two separately trained models' features, both branches here
learn from the same loss, so each can specialise in what the other misses. It trains with the image.*
settings (epochs, batch size, lr for the backbone and head, and the fine-tuning recipe but for mixup and cutmix,
which would mix images under captions they do not match) and the text.* ones for the caption branch (its
architecture, vocabulary and learning rate).
"""
from __future__ import annotations

import torch
from torch import nn

from ..context import FoldJob, FoldOutput
from ..labels import N_LABELS
from ..device import resolve_device
from ..trainer import load_checkpoint
from .spec import ModelSpec
from .bilstm import caption_branch, encode, fold_vocab, saved_vocab
from .image import backbone_param_groups, build_backbone, check_image_weights, eval_probs, fit_image_net, normalise, register_input_stats


class JointNet(nn.Module):
    """[image backbone features, Bi-LSTM caption features] -> dropout -> 18 logits."""

    channels_last = True

    def __init__(self, backbone: nn.Module, caption: nn.Module, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.caption = caption
        caption_dim = caption.head.in_features
        caption.head = nn.Identity()  # the Bi-LSTM's own 18-logit head would sit unused: this net has one head
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features + caption_dim, N_LABELS)
        register_input_stats(self, backbone)

    def embed(self, image, ids):
        return self.drop(torch.cat([self.backbone(normalise(self, image)), self.caption.embed(ids)], dim=1))


def run(job: FoldJob) -> FoldOutput:
    cfg, comp = job.cfg, job.comp
    vocab, vectors = fold_vocab(job)
    net = JointNet(build_backbone(cfg), caption_branch(cfg, vectors), cfg.text.dropout)
    groups = [*backbone_param_groups(cfg, net.backbone), {"params": list(net.caption.parameters()), "lr": cfg.text.lr},
              {"params": list(net.head.parameters()), "lr": cfg.image.lr}]
    return fit_image_net(job, net, groups, encode(cfg, vocab, comp.train), encode(cfg, vocab, comp.test), features=False)


def infer(job: FoldJob, frame, upstream):
    import timm

    vocab, vectors = saved_vocab(job)
    net = JointNet(timm.create_model(job.cfg.image.model, pretrained=False, num_classes=0),
                   caption_branch(job.cfg, vectors), job.cfg.text.dropout)
    net.load_state_dict(load_checkpoint(job.ckpt_dir / "best.pt")["model"])
    return eval_probs(job, net, frame, resolve_device(job.cfg.device), encode(job.cfg, vocab, frame))


SPEC = ModelSpec(kind="joint", run=run, infer=infer, store=lambda model, images: images.at(model.cfg.image),
                 preflight=check_image_weights, together=True)
