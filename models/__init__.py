"""The retrieval models, one family behind one registry: AMDNet, MS-SL, GMMFormer and the training-free
CLIP searcher. Importing the package imports every model module so that each registers its name; a new
model is one more module here (see docs/models.md)."""

from models.registry import RetrievalModel, concat_rows, create_model, list_models, model_class, register_model, take_rows
# imported so that each registers its name
from models import amdnet, clip_zero_shot, gmmformer, ms_sl  # noqa: F401

__all__ = ["RetrievalModel", "concat_rows", "create_model", "list_models", "model_class", "register_model",
           "take_rows"]
