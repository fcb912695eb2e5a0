"""`i3d`: Inception-v1 inflated to 3D (Carreira and Zisserman 2017), RGB stream, as a clip backbone.

The module layout and parameter names follow the widely used PyTorch port, so its state dicts
(`rgb_imagenet.pt`: Kinetics-400, `rgb_charades.pt`: 157 Charades classes) load by path with
strict key matching:

    create_extractor("i3d", pretrained="/models/rgb_imagenet.pt")

Convolutions and max-pools use TensorFlow's "same" padding, computed from each input's size (the
original model is a TF model). The clip feature is the 1024-d output of the final average pool,
before the logits. That pool is 2x7x7 with stride 1: a 224x224 clip of 16 frames leaves exactly one
position, longer clips leave several along time, and the feature is their mean. Smaller inputs
(fewer frames, or frames under 224x224) leave a map smaller than the pool; the pool is then
shrunk to the map's size, i.e. it becomes a global average.
"""

import torch
import torch.nn.functional as F
from torch import nn

from amdnet.config import resolve_device
from extractors.registry import ClipExtractor, ClipRecipe, load_state_dict_file, register_extractor, seeded_random_init

# Output channels of each inception block's units, in the order b0, b1a, b1b, b2a, b2b, b3b.
MIXED_BLOCK_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FEATURE_DIM = 1024
AVERAGE_POOL_KERNEL = (2, 7, 7)  # (time, height, width)
KINETICS_FPS = 25.0  # Kinetics clips, on which the I3D weights were trained, are 25 fps


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad (B, C, T, H, W) as TensorFlow's "same" does: each output covers ceil(size / stride)
    positions, the extra row going after rather than before when the padding is odd."""
    padding = []
    for size, kernel_size, step in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants W first
        output_size = -(-size // step)
        total = max((output_size - 1) * step + kernel_size - size, 0)
        padding += [total // 2, total - total // 2]
    return F.pad(x, padding)


class Unit3D(nn.Module):
    """Conv3d (no bias) with "same" padding, BatchNorm (TF's eps 1e-3, momentum 0.01), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)
        # The published state dicts predate BatchNorm's batch counter, which nothing here uses
        # (the momentum is fixed); without it our keys are exactly theirs.
        self.bn.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))  # (B, C_out, T', H', W')
        return F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max-pool with "same" padding. Zero padding equals TF's -inf padding here because every
    pooled input comes out of a ReLU."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3;
    3x3x3 max-pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)  # (B, out_channels, T, H, W)


class Logits(nn.Module):
    """The classifier: a biased 1x1x1 convolution (named so that its keys are `logits.conv3d.*`)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv3d = nn.Conv3d(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3d(x)


class InceptionI3d(nn.Module):
    """I3D RGB network. Input (B, 3, T, H, W) scaled to [-1, 1], nominally 224x224 and 16-64 frames."""

    def __init__(self, num_classes: int = 400, dropout: float = 0.5):
        super().__init__()
        self.trunk_names = []
        self._add("Conv3d_1a_7x7", Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2)))
        self._add("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2)))
        self._add("Conv3d_2b_1x1", Unit3D(64, 64))
        self._add("Conv3d_2c_3x3", Unit3D(64, 192, kernel=(3, 3, 3)))
        self._add("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2)))
        channels = 192
        pools_before = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        for name, widths in MIXED_BLOCK_WIDTHS.items():
            if name in pools_before:
                pool_name, kernel = pools_before[name]
                self._add(pool_name, MaxPool3dSame(kernel, (2, 2, 2)))
            block = InceptionBlock(channels, widths)
            self._add(name, block)
            channels = block.out_channels
        self.dropout = nn.Dropout(dropout)
        self.logits = Logits(channels, num_classes)
        self._init_convolutions()

    def _init_convolutions(self) -> None:
        # He init (fan-in) keeps activations near unit scale through the 20-odd layers; with torch's
        # default init randomly initialised features (tests, the demo) shrink to about 1e-6,
        # which float16 on a GPU would round to zero.
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def _add(self, name: str, layer: nn.Module) -> None:
        # Layers are direct children (not inside a Sequential) so that state-dict keys carry no prefix.
        self.add_module(name, layer)
        self.trunk_names.append(name)

    def _pooled_map(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the average-pooled last map (B, 1024, T', H', W'): one position for a
        16-frame 224x224 clip, ceil(T / 8) - 1 along time for longer 224x224 clips."""
        x = clips
        for name in self.trunk_names:
            x = getattr(self, name)(x)  # ends as (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))
        kernel = [min(pool_size, map_size) for pool_size, map_size in zip(AVERAGE_POOL_KERNEL, x.shape[2:])]
        return F.avg_pool3d(x, kernel, stride=1)

    def extract_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> clip features (B, 1024)."""
        return self._pooled_map(clips).mean(dim=(2, 3, 4))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> class logits (B, num_classes), averaged over positions."""
        logits = self.logits(self.dropout(self._pooled_map(clips)))  # (B, num_classes, T', H', W')
        return logits.mean(dim=(2, 3, 4))


@register_extractor("i3d")
class I3DExtractor(ClipExtractor):
    """I3D RGB clip features, 1024-d.

    pretrained: a local state-dict file of the PyTorch I3D port (keys matched strictly; BatchNorm
        batch counters, which some re-saved files carry, are ignored), or None for random weights
        seeded with `seed`.
    num_classes: size of the logits layer in that file (400 Kinetics, 157 Charades); the features
        do not depend on it, but the file must match it.
    clip_len: frames per clip (16-64 for the published weights). image_size: frame side in pixels.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        seed: int = 0,
        num_classes: int = 400,
        clip_len: int = 16,
        image_size: int = 224,
        device: str = "auto",
        batch_size: int = 8,
        progress: bool = False,
    ):
        device = resolve_device(device)
        with seeded_random_init(seed):
            network = InceptionI3d(num_classes=num_classes)
        if pretrained is not None:
            load_state_dict_file(network, pretrained, ignored_keys=lambda key: key.endswith(".num_batches_tracked"))
        recipe = ClipRecipe(
            image_size=(image_size, image_size),
            mean=(0.5, 0.5, 0.5),  # (x - 0.5) / 0.5 maps [0, 1] to I3D's [-1, 1]
            std=(0.5, 0.5, 0.5),
            clip_len=clip_len,
            frames_per_second=KINETICS_FPS,
        )
        super().__init__(dim=FEATURE_DIM, recipe=recipe, device=device, batch_size=batch_size, progress=progress)
        self._network = network.to(device).eval()

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._network.extract_features(pixels)  # (B, 3, T, h, w) -> (B, 1024)
