"""trainer.predict: flip test-time augmentation touches images, never token ids."""
import numpy as np
import torch
from torch import nn

from solution.config import build_config
from solution.trainer import ArrayRows, make_loader, predict


class Probe(nn.Module):
    """Features: the image's left-column sum, then the token ids as they arrived."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, 18)

    def embed(self, image, ids):
        return torch.cat([image[:, :, :, 0].float().sum(dim=(1, 2))[:, None], ids.float()], dim=1)


def test_flip_tta_flips_the_image_and_keeps_the_caption_order():
    image = np.zeros((2, 3, 4, 4), np.uint8)
    image[:, :, :, 0] = 1  # left column lit: flipped, the left column is dark
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    loader, _ = make_loader(ArrayRows([image, ids], None), 2, build_config(["num_workers=0"]), shuffle=False)
    _, feats = predict(Probe(), loader, torch.device("cpu"), tta_flip=True)
    np.testing.assert_allclose(feats[:, 0], [6.0, 6.0])  # mean of 12 (original) and 0 (flipped)
    np.testing.assert_allclose(feats[:, 1:], ids)
