"""Which backbone each feature stage builds, with which options: from the config alone.

Config checks (pipeline/config.py) read these when a config is loaded, in every process, so this
module imports no backbone; the feature stages and the search build from the same options.
"""
from __future__ import annotations

from extractors import list_extractors

# The part's settings that do not change its features, shared by every part of visual.parts.
_EXTRACTION_SETTINGS = ("batch_size", "num_workers", "device", "max_failed_fraction", "shards")


def part_settings(visual: dict, name: str) -> dict:
    """Everything the extraction of part ``name`` needs, with the recipe's shared values filled in."""
    part = visual["parts"][name]
    return {**part, "fps": part["fps"] or visual["fps"], "size": visual["size"],
            **{key: visual[key] for key in _EXTRACTION_SETTINGS}}


def items_per_batch(visual: dict) -> int:
    """visual.batch_size counts frames, so a batch of windows holds about as many frames as one of
    frames (and as much memory)."""
    if visual["backbone"] in list_extractors("clips"):
        return max(1, visual["batch_size"] // visual["clip_len"])
    return visual["batch_size"]


def visual_extractor_options(visual: dict) -> tuple[str, dict]:
    """The part's backbone name and its options: only those that kind of backbone has."""
    options = {"pretrained": visual["pretrained"], "seed": visual["seed"], "device": visual["device"],
               "batch_size": items_per_batch(visual)}
    if visual["model"] is not None:  # backbones with one architecture (resnet152, i3d) have no `model`
        options["model"] = visual["model"]
    if visual["backbone"] in list_extractors("clips"):
        options["clip_len"] = visual["clip_len"]
    return visual["backbone"], options


def text_encoder_options(text: dict) -> tuple[str, dict]:
    """The text encoder's name and its options."""
    options = {"model": text["model"], "device": text["device"], "batch_size": text["batch_size"]}
    if text["encoder"] == "clip-text":
        options.update(pretrained=text["pretrained"], seed=text["seed"])
    else:
        options.update(layer=text["layer"], max_length=text["max_length"],
                       strip_special_tokens=text["strip_special_tokens"])
    return text["encoder"], options


def text_encoder(text: dict):
    """The text encoder the `text` section names (its module imported now, its weights loaded)."""
    from extractors.registry import create_extractor  # torch and transformers or open_clip: seconds

    name, options = text_encoder_options(text)
    return create_extractor(name, **options)
