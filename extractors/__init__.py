"""Feature extractors: frame, clip and text backbones behind one registry.

Importing the package imports every backbone module so that each registers its name.
"""

from extractors.registry import create_extractor, list_extractors, register_extractor
# imported so that each registers its names
from extractors import clip_image, clip_text, i3d, resnet, text, video_models  # noqa: F401

__all__ = ["create_extractor", "list_extractors", "register_extractor"]
