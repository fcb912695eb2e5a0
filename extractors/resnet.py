"""`torchvision-2d` and `resnet152`: torchvision image classifiers as per-frame backbones.

The feature of a frame is the input of the network's final linear classifier: for ResNets the
global-average-pooled last stage (ResNet-152: 2048-d, the TVR recipe's frame feature, extracted
with `create_extractor("resnet152", pretrained="IMAGENET1K_V1")`). Any torchvision
classification architecture whose head ends in a Linear layer works the same way through
`create_extractor("torchvision-2d", model="resnet50")` (config: `backbone: torchvision-2d, model: resnet50`).
"""

import torch
import torchvision
from torch import nn

from amdnet.config import resolve_device
from extractors.registry import FrameExtractor, FrameRecipe, create_torchvision_model, register_extractor

CLASSIFICATION_ARCHS = tuple(torchvision.models.list_models(module=torchvision.models))


@register_extractor("torchvision-2d")
class TorchvisionImageExtractor(FrameExtractor):
    """A torchvision classification model with its final Linear layer removed.

    model: a torchvision classification model name ("resnet152", "resnet50", "efficientnet_b0", ...).
    pretrained: a torchvision weights name of that model ("IMAGENET1K_V2"; downloaded on first use),
        a local state-dict file, or None for random weights seeded with `seed`.
    The input size and ImageNet normalisation come from the weights' own preprocessing
    (the architecture's default weights when loading a file or drawing random weights).
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
    ):
        if model not in CLASSIFICATION_ARCHS:
            known = ", ".join(CLASSIFICATION_ARCHS)
            raise ValueError(f"unknown torchvision classification model {model!r}; known: {known}")
        device = resolve_device(device)
        network, weights = create_torchvision_model(model, pretrained, seed)
        dim = _remove_final_linear(network, model)
        preprocess = weights.transforms()
        crop = preprocess.crop_size[0]
        recipe = FrameRecipe(image_size=(crop, crop), mean=tuple(preprocess.mean), std=tuple(preprocess.std))
        super().__init__(dim=dim, recipe=recipe, device=device, batch_size=batch_size, progress=progress)
        self._network = network.to(device)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._network(pixels)  # (B, 3, h, w) -> (B, dim)


@register_extractor("resnet152")
class ResNet152Extractor(TorchvisionImageExtractor):
    """ResNet-152 frame features, 2048-d; `pretrained` as for `torchvision-2d` ("IMAGENET1K_V1",
    "IMAGENET1K_V2", a state-dict file, or None)."""

    def __init__(
        self,
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
    ):
        super().__init__("resnet152", pretrained, seed, device, batch_size, progress)


def _remove_final_linear(network: nn.Module, arch: str) -> int:
    """Replace the last Linear layer (torchvision builds the classifier last) by an identity, so the
    network returns that layer's input; -> the feature size."""
    linear_layers = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not linear_layers:
        raise ValueError(f"torchvision model {arch!r} has no Linear classifier to take pooled features from")
    name, classifier = linear_layers[-1]
    parent_name, _, attribute = name.rpartition(".")
    setattr(network.get_submodule(parent_name), attribute, nn.Identity())
    return classifier.in_features
