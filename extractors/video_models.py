"""`r2plus1d_18`, `r3d_18`, `s3d`: torchvision's Kinetics-400 video classifiers as clip backbones.

The feature of a clip is the pooled layer before the classifier: 512-d for R(2+1)D-18 and R3D-18,
1024-d for S3D. Inputs follow the Kinetics weights' preprocessing (their mean/std, 112x112 frames
for the ResNets and 224x224 for S3D) and their training clips: 16 frames at 15 fps.
"""

import torch
from torch import nn

from amdnet.config import resolve_device
from extractors.registry import ClipExtractor, ClipRecipe, create_torchvision_model, register_extractor

# The frame rate the torchvision Kinetics weights were trained and evaluated at (their docs).
KINETICS_TRAINING_FPS = 15.0


class TorchvisionVideoExtractor(ClipExtractor):
    """A torchvision video model with its classifier replaced by an identity.

    pretrained: a torchvision weights name ("KINETICS400_V1"; downloaded on first use), a local
        state-dict file, or None for random weights seeded with `seed`.
    clip_len: frames per clip. image_size: frame side in pixels, None for the weights' crop size.
    """

    arch: str
    classifier_name: str  # the attribute holding the classification head
    feature_dim: int

    def __init__(
        self,
        pretrained: str | None = None,
        seed: int = 0,
        clip_len: int = 16,
        image_size: int | None = None,
        device: str = "auto",
        batch_size: int = 8,
        progress: bool = False,
    ):
        device = resolve_device(device)
        network, weights = create_torchvision_model(self.arch, pretrained, seed)
        setattr(network, self.classifier_name, nn.Identity())
        preprocess = weights.transforms()
        side = image_size or preprocess.crop_size[0]
        recipe = ClipRecipe(
            image_size=(side, side),
            mean=tuple(preprocess.mean),
            std=tuple(preprocess.std),
            clip_len=clip_len,
            frames_per_second=KINETICS_TRAINING_FPS,
        )
        super().__init__(dim=self.feature_dim, recipe=recipe, device=device, batch_size=batch_size, progress=progress)
        self._network = network.to(device)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._network(pixels)  # (B, 3, T, h, w) -> (B, dim)


@register_extractor("r2plus1d_18")
class R2Plus1D18Extractor(TorchvisionVideoExtractor):
    arch, classifier_name, feature_dim = "r2plus1d_18", "fc", 512


@register_extractor("r3d_18")
class R3D18Extractor(TorchvisionVideoExtractor):
    arch, classifier_name, feature_dim = "r3d_18", "fc", 512


@register_extractor("s3d")
class S3DExtractor(TorchvisionVideoExtractor):
    """S3D's head average-pools over 2x7x7 positions, then (after the removed classifier) averages
    what is left: frames must be at least 224x224 (7x7 after its stride of 32), clips >= 14 frames."""

    arch, classifier_name, feature_dim = "s3d", "classifier", 1024
