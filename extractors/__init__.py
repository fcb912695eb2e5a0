"""Feature extractors: frame and text backbones behind one registry.

Importing the package imports every backbone module so that each registers its name.
"""

from extractors.registry import create_extractor, list_extractors, register_extractor
from extractors import clip_image, text  # noqa: F401  (imported to register "clip" and "hf-text")

__all__ = ["create_extractor", "list_extractors", "register_extractor"]
