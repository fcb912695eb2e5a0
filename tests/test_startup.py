"""Start-up in proportion to the work: the config checks and the Luigi entry points import no
backbone (nor torch), and the static tables they read (extractors/names.py) equal what the
libraries themselves say. benchmarks/startup.py measures the times."""
from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

from extractors.names import BACKBONES, TORCHVISION_TABLE, open_clip_models, read_torchvision_weights

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "matplotlib", "decord", "av", "faiss")


def test_backbone_table_equals_the_registered_classes():
    """Each name of the table is registered by importing its module, with the table's kind and options."""
    from extractors import registry

    for name, backbone in BACKBONES.items():
        importlib.import_module(backbone.module)
        cls = registry._EXTRACTORS[name]
        parameters = inspect.signature(cls).parameters
        assert cls.kind == backbone.kind, name
        assert tuple(parameters) == backbone.options, name
        assert tuple(key for key, p in parameters.items() if p.default is inspect.Parameter.empty) == backbone.required
    assert set(registry._EXTRACTORS) == set(BACKBONES)


def test_open_clip_names_equal_open_clip_list_models():
    import extractors.clip_image  # noqa: F401 (adds our configs, as every run that builds a CLIP model does)
    import open_clip

    assert list(open_clip_models()) == sorted(open_clip.list_models())
    assert "TinyViT-32-test" in open_clip_models() and "ViT-B-32" in open_clip_models()


def test_torchvision_table_equals_torchvision():
    table = json.loads(TORCHVISION_TABLE.read_text())
    from importlib.metadata import version

    assert table["torchvision"] == version("torchvision"), (
        "torchvision was upgraded: rewrite extractors/torchvision_weights.json from "
        "extractors.names.read_torchvision_weights() (it is only read for the version it was written from)")
    assert table["weights"] == read_torchvision_weights()


def _modules_after(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("code", [
    "from pipeline.config import load_config; load_config('demo'); load_config('demo', 'text.encoder=clip-text "
    "text.model=ViT-B-32 visual.parts.clip.backbone=resnet152 visual.parts.clip.model=null')",
    "import tasks; tasks.FullPipeline(dataset='demo').requires()",
    "import pipeline.explain",
    "import search.cli",
])
def test_entry_points_import_no_backbone(code):
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
