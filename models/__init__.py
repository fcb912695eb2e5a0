"""The retrieval models, one family behind one registry: AMDNet, MS-SL, GMMFormer and the training-free
CLIP searcher, each in its own module (see docs/models.md for how to add one).

Importing the package costs nothing: `models.configs` (every model's options and facts) is what a
config check needs and imports no torch. The registry (`create_model`, `list_models`, ...) imports
the model modules on first use.
"""

__all__ = ["RetrievalModel", "concat_rows", "create_model", "list_models", "model_class", "register_model",
           "take_rows"]


def __getattr__(name: str):
    if name in __all__:  # torch
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
