"""`clip`: the image tower of an open_clip model, one projected embedding per frame.

AMDNet's published inputs are OpenAI CLIP ViT-B/32 image features (512-d, not L2-normalised), i.e.
`create_extractor("clip", model="ViT-B-32", pretrained="openai")`. Without network access use
`pretrained=None` (random init seeded by `seed`) or a local checkpoint file.
"""

import open_clip
import torch
from open_clip.utils import to_2tuple

from amdnet.config import resolve_device
from extractors.names import OPEN_CLIP_CONFIG_DIR
from extractors.registry import FrameExtractor, FrameRecipe, register_extractor, seeded_random_init

open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)


@register_extractor("clip")
class ClipImageExtractor(FrameExtractor):
    """open_clip image encoder.

    model: an open_clip architecture name ("ViT-B-32", "ViT-L-14", "TinyViT-32-test", ...).
    pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k"; downloaded on first
        use), a local checkpoint file (a state dict of the whole CLIP model), or None for random
        weights drawn from a torch generator seeded with `seed` (same seed, same weights).
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
    ):
        device = resolve_device(device)
        clip = create_clip_model(model, pretrained, seed)
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        recipe = FrameRecipe(
            image_size=to_2tuple(preprocess["size"]),
            mean=tuple(preprocess["mean"]),
            std=tuple(preprocess["std"]),
        )
        super().__init__(
            dim=open_clip.get_model_config(model)["embed_dim"],
            recipe=recipe,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        # Keep only the image tower: the text tower is half the weights and never used here.
        self._visual = clip.visual.to(device).eval()

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._visual(pixels)  # (B, 3, h, w) -> (B, dim), projected, not normalised


def create_clip_model(model: str, pretrained: str | None, seed: int) -> torch.nn.Module:
    """A whole open_clip model (both towers) on the CPU; `pretrained` as in ClipImageExtractor."""
    # OpenAI's checkpoints were trained with QuickGELU; a plain "ViT-B-32" config uses exact GELU,
    # which would load the weights without error but give subtly wrong features.
    quick_gelu = bool(pretrained) and open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False)
    with seeded_random_init(seed):
        return open_clip.create_model(model, pretrained=pretrained, force_quick_gelu=quick_gelu, device="cpu")
