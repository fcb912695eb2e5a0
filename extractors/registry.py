"""Extractor registry and the contract every feature backbone follows.

A backbone lives in its own small module, subclasses `FrameExtractor` (kind "frames": uint8 RGB
frames in, one vector per frame out), `ClipExtractor` (kind "clips": uint8 RGB clips of a fixed
number of frames in, one vector per clip out) or `TextExtractor` (kind "text": strings in, token
features out), and registers itself under a name:

    @register_extractor("clip")
    class ClipImageExtractor(FrameExtractor): ...

Pipeline stages then build backbones from config dictionaries by name:

    extractor = create_extractor("clip", model="ViT-B-32", pretrained="openai")
    features = extractor.encode(frames)          # (N, extractor.dim) float32

Every extractor exposes `kind`, `dim` (output feature size) and its input recipe: `recipe` (input
size and mean/std normalisation) for frame backbones, `recipe` with `clip_len` and the frame rate
it was trained at for clip backbones, `max_length` for text backbones.

The names, kinds and options of the registered backbones are also listed in extractors/names.py,
which checks a config's names without importing any backbone; `create_extractor` imports only the
module of the backbone it builds.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from extractors.names import BACKBONES, EXTRACTOR_KINDS, check_options, check_torchvision_names
from extractors.text_policy import is_blank

if TYPE_CHECKING:
    from torchvision.models import Weights

_EXTRACTORS: dict[str, type] = {}


def register_extractor(name: str) -> Callable[[type], type]:
    """Class decorator: make `cls` buildable as `create_extractor(name, **cfg)`. The name must be in
    extractors/names.py's BACKBONES too, which config checks read without importing the module."""

    def register(cls: type) -> type:
        if getattr(cls, "kind", None) not in EXTRACTOR_KINDS:
            raise TypeError(
                f"{cls.__qualname__} must declare kind as one of {EXTRACTOR_KINDS}, got {getattr(cls, 'kind', None)!r}"
            )
        if name in _EXTRACTORS:
            raise ValueError(f"extractor name {name!r} is already registered by {_EXTRACTORS[name].__qualname__}")
        if name not in BACKBONES:
            raise ValueError(f"extractor name {name!r} is not in extractors/names.py BACKBONES: add it there")
        _EXTRACTORS[name] = cls
        return cls

    return register


def create_extractor(name: str, **cfg):
    """Build the extractor registered as `name` with the keyword options `cfg`; only its own module
    is imported.

    Options are checked before anything heavy (model weights) is loaded, so a typo in a config file
    fails at once with the offending key named.
    """
    check_options(name, cfg)
    if name not in _EXTRACTORS:
        importlib.import_module(BACKBONES[name].module)  # registers it
    return _EXTRACTORS[name](**cfg)


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """No autograd anywhere; float16 autocast on CUDA, where it roughly doubles throughput."""
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        yield


@contextlib.contextmanager
def seeded_random_init(seed: int) -> Iterator[None]:
    """Model construction inside draws its random weights from torch's global generator seeded with
    `seed`; the generator is forked, so the seed neither leaks into nor depends on the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def batched(items: Sequence, batch_size: int, progress: bool, description: str) -> Iterator[Sequence]:
    """Consecutive slices of `items`, with a tqdm bar when `progress`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=not progress):
        yield items[start : start + batch_size]


@dataclass(frozen=True)
class FrameRecipe:
    """How a frame backbone wants its pixels: RGB resized to `image_size` (H, W), scaled to [0, 1],
    then normalised per channel as (x - mean) / std. mean = std = 0.5 scales pixels to [-1, 1]."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ClipRecipe(FrameRecipe):
    """A clip backbone's input: `clip_len` consecutive frames, each prepared as a FrameRecipe says,
    sampled at `frames_per_second` (the rate the weights were trained at; None if it does not matter)."""

    clip_len: int
    frames_per_second: float | None = None


def preprocess_frames(frames: torch.Tensor, recipe: FrameRecipe) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, h, w) normalised as the recipe says.

    Frames of another size are resized (bicubic, antialiased) so that they cover the target, then
    centre-cropped: for the square frames the decoder produces this is a plain resize, and other
    aspect ratios are never distorted.
    """
    pixels = frames.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W) in [0, 1]
    target_h, target_w = recipe.image_size
    height, width = pixels.shape[-2:]
    if (height, width) != (target_h, target_w):
        scale = max(target_h / height, target_w / width)
        resized_h, resized_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
        pixels = F.interpolate(pixels, size=(resized_h, resized_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (resized_h - target_h) // 2, (resized_w - target_w) // 2
        # bicubic overshoots slightly past the input range
        pixels = pixels[:, :, top : top + target_h, left : left + target_w].clamp(0.0, 1.0)
    mean = torch.tensor(recipe.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std  # (N, 3, h, w)


class _PixelExtractor(abc.ABC):
    """Batching, device placement and autocast shared by frame and clip backbones. Subclasses say
    how to check and normalise one batch of uint8 input and implement `_embed`."""

    def __init__(self, dim: int, recipe: FrameRecipe, device: torch.device, batch_size: int, progress: bool):
        self.dim = dim
        self.recipe = recipe
        self.device = device
        self.batch_size = batch_size
        self.progress = progress

    @abc.abstractmethod
    def _check_input(self, pixels: np.ndarray) -> None:
        """Raise ValueError naming the expected layout when `pixels` does not have it."""

    @abc.abstractmethod
    def _preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 batch on self.device -> the normalised float tensor `_embed` takes."""

    @abc.abstractmethod
    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels on self.device -> features (B, dim)."""

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB input (N, ...) -> float32 features (N, dim)."""
        self._check_input(pixels)
        outputs = [np.zeros((0, self.dim), dtype=np.float32)]
        with inference_context(self.device):
            for batch in batched(pixels, self.batch_size, self.progress, type(self).__name__):
                batch_on_device = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
                features = self._embed(self._preprocess(batch_on_device))  # (B, dim)
                outputs.append(features.float().cpu().numpy())
        return np.concatenate(outputs)


class FrameExtractor(_PixelExtractor):
    """Per-frame image backbone: `encode(frames)` maps uint8 RGB frames (N, H, W, 3) to float32
    features (N, dim). Subclasses build their network and implement `_embed` on (B, 3, h, w)."""

    kind = "frames"

    def _check_input(self, frames: np.ndarray) -> None:
        _check_pixels(frames, 4, "frames (N, H, W, 3)", type(self).__name__)

    def _preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        return preprocess_frames(frames, self.recipe)  # (B, H, W, 3) -> (B, 3, h, w)


class ClipExtractor(_PixelExtractor):
    """Video clip backbone: `encode(clips)` maps uint8 RGB clips (N, T, H, W, 3), T = recipe.clip_len,
    to float32 features (N, dim). Subclasses build their network and implement `_embed` on
    (B, 3, T, h, w), the layout of torch's Conv3d."""

    kind = "clips"
    recipe: ClipRecipe

    def _check_input(self, clips: np.ndarray) -> None:
        _check_pixels(clips, 5, "clips (N, T, H, W, 3)", type(self).__name__)
        if clips.shape[1] != self.recipe.clip_len:
            raise ValueError(
                f"{type(self).__name__}.encode expects clips of clip_len={self.recipe.clip_len} frames, "
                f"got {clips.shape[1]} (shape {clips.shape})"
            )

    def _preprocess(self, clips: torch.Tensor) -> torch.Tensor:
        batch, clip_len = clips.shape[:2]
        frames = preprocess_frames(clips.flatten(0, 1), self.recipe)  # (B*T, 3, h, w)
        frames = frames.unflatten(0, (batch, clip_len))  # (B, T, 3, h, w)
        return frames.permute(0, 2, 1, 3, 4)  # (B, 3, T, h, w)


def _check_pixels(pixels: np.ndarray, ndim: int, layout: str, extractor_name: str) -> None:
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == ndim and pixels.shape[-1] == 3:
        return
    described = f"{pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels)
    raise ValueError(f"{extractor_name}.encode expects uint8 RGB {layout}, got {described}")


def load_state_dict_file(
    module: torch.nn.Module, path: str | Path, ignored_keys: Callable[[str], bool] | None = None
) -> None:
    """Load the state dict saved at `path` into `module`, requiring exactly its keys and shapes.

    Errors name the file and every missing, unexpected or mis-shaped key. Keys for which
    `ignored_keys(key)` is true are dropped from the file first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    if ignored_keys is not None:
        state = {key: value for key, value in state.items() if not ignored_keys(key)}
    expected = module.state_dict()
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for key in expected.keys() & state.keys():
        if tuple(state[key].shape) != tuple(expected[key].shape):
            problems.append(
                f"{key} has shape {tuple(state[key].shape)}, the model expects {tuple(expected[key].shape)}"
            )
    if problems:
        raise ValueError(f"weights file {path} does not fit {type(module).__name__}: " + "; ".join(problems))
    # The keys were matched exactly above. strict=False only lets BatchNorm add the counter it
    # back-fills into files that carry no version metadata (old checkpoints, or the filtered dict).
    module.load_state_dict(state, strict=False)


@dataclass
class TextFeatures:
    """One text's features: `tokens` (L, D) for its L valid tokens, `pooled` (D,) = their mean."""

    tokens: np.ndarray
    pooled: np.ndarray


class TextExtractor(abc.ABC):
    """Text backbone: a list of strings -> one TextFeatures per string."""

    kind = "text"
    dim: int
    max_length: int

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> list[TextFeatures]:
        """Features for each text, in order."""

    @abc.abstractmethod
    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens in each whole text, start and end tokens included: more than `max_length` are cut."""


def check_texts(texts: list[str]) -> None:
    """Reject input that would silently give meaningless features (a lone string, empty texts)."""
    if isinstance(texts, str):
        raise TypeError("encode expects a list of strings, got a single string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text at index {index} is a {type(text).__name__}, not a string")
        if is_blank(text):
            raise ValueError(f"text at index {index} is empty (no visible character)")


def create_torchvision_model(arch: str, pretrained: str | None, seed: int) -> tuple[torch.nn.Module, Weights]:
    """The torchvision model `arch` in eval mode, and the weights entry whose preprocessing it expects.

    pretrained: a weights name of `arch` ("IMAGENET1K_V2", "KINETICS400_V1"; downloaded on first
    use), a local state-dict file, or None for random weights seeded with `seed`. For a file or
    random init the preprocessing is that of the architecture's default weights.
    """
    import torchvision  # seconds: only the backbones built on it pay for it

    check_torchvision_names(arch, pretrained)
    available = torchvision.models.get_model_weights(arch)
    if pretrained is not None and not Path(pretrained).is_file():
        weights = available[pretrained]
        return torchvision.models.get_model(arch, weights=weights).eval(), weights
    with seeded_random_init(seed):
        model = torchvision.models.get_model(arch, weights=None)
    if pretrained is not None:
        load_state_dict_file(model, pretrained)
    return model.eval(), available.DEFAULT
