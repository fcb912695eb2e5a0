"""Feature extractors: frame, clip and text backbones behind one registry.

The names, kinds and options of the backbones come from extractors/names.py, which imports none of
them; `create_extractor` imports the module of the one it builds (torch and the library it is made
with: torchvision, open_clip or transformers), so this package costs nothing to import.
"""

from extractors.names import list_extractors

__all__ = ["create_extractor", "list_extractors", "register_extractor"]


def __getattr__(name: str):
    """create_extractor and register_extractor, from the registry (torch) on first use."""
    if name in ("create_extractor", "register_extractor"):
        from extractors import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'extractors' has no attribute {name!r}")
