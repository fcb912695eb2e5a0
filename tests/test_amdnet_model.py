import math

import pytest
import torch

from amdnet import AMDNet, ModelConfig
from amdnet.cli import main
from amdnet.model import AttentionSubLayer, gaussian_moment_masks, pool_query_tokens


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("hidden_size, expected", [(384, 1_781_896), (256, 893_704)])
def test_parameter_count_matches_reference(hidden_size, expected):
    model = AMDNet(ModelConfig(hidden_size=hidden_size), video_dim=512, query_dim=512)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_summary_command_prints_total(capsys):
    main(["summary", "--hidden-size", "384", "--video-dim", "512", "--query-dim", "512"])
    output = capsys.readouterr().out
    assert "Total parameters: 1,781,896" in output
    assert "moment_attention.query.weight" in output


def test_initialisation_follows_spec():
    torch.manual_seed(0)
    model = AMDNet(ModelConfig(hidden_size=384), video_dim=512, query_dim=512)
    assert model.self_attention.query.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.position_table.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.anchor_head.bias == 0)
    assert torch.all(model.video_norm.weight == 1) and torch.all(model.video_norm.bias == 0)


def test_moment_mask_peaks_at_nearest_grid_point_with_gaussian_shape():
    centers = torch.tensor([[0.5, 0.1, 0.93]])
    widths = torch.tensor([[0.3, 0.6, 0.2]])
    masks = gaussian_moment_masks(centers, widths, map_size=32)  # (1, 3, 32)
    grid = torch.linspace(0, 1, 32)
    for k in range(3):
        c, w = centers[0, k].item(), widths[0, k].item()
        nearest = int(torch.argmin((grid - c).abs()))
        assert int(masks[0, k].argmax()) == nearest
        assert masks[0, k, nearest].item() == pytest.approx(1.0)
        sigma = w / 9
        density = torch.exp(-(grid - c) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
        torch.testing.assert_close(masks[0, k], density / density.max())


def test_moment_mask_is_finite_for_the_narrowest_moment():
    masks = gaussian_moment_masks(torch.tensor([[0.0161]]), torch.tensor([[1e-4]]), map_size=32)
    assert torch.isfinite(masks).all()
    assert masks.max().item() == 1.0


def test_masked_attention_multiplies_logits_along_keys():
    torch.manual_seed(0)
    layer = AttentionSubLayer(hidden_size=8, n_heads=2, dropout=0.0)
    x = torch.randn(1, 5, 8)
    key_masks = torch.ones(1, 2, 5)
    key_masks[0, 1, 3:] = 0.0  # head 1 masks keys 3 and 4
    weights = layer.attention_weights(x, key_masks.unsqueeze(2))  # (1, 2, 5, 5)

    queries = layer.query(x).view(1, 5, 2, 4).transpose(1, 2)
    keys = layer.key(x).view(1, 5, 2, 4).transpose(1, 2)
    logits = queries @ keys.transpose(-1, -2) / 2.0
    head1 = logits[0, 1].clone()
    head1[:, 3:] = 0.0  # multiplied by 0: logit 0, weight exp(0) / Z, not zero
    expected = head1.exp() / head1.exp().sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights[0, 1], expected)
    assert torch.all(weights[0, 1, :, 3:] > 0)
    torch.testing.assert_close(weights[0, 0], logits[0, 0].softmax(dim=-1))  # head 0 unmasked


def test_encode_videos_shapes_with_single_video():
    model = AMDNet(ModelConfig(hidden_size=16), video_dim=6, query_dim=5).eval()
    clips = torch.randn(1, 32, 6)
    videos = model.encode_videos(clips)
    assert videos.clip_features.shape == (1, 32, 16)
    assert videos.global_vector.shape == (1, 16)
    assert videos.centers.shape == videos.widths.shape == (1, 4)
    assert videos.masks.shape == (1, 4, 32)
    assert videos.proposals.shape == (1, 4, 16)
    assert ((videos.centers > 0) & (videos.centers < 1)).all()
    embedded = model.video_norm(model.video_projection(clips) + model.position_table.weight[:32])  # V
    torch.testing.assert_close(videos.proposals, videos.masks @ embedded)


@pytest.mark.parametrize("pooling", ["mean", "max", "first"])
def test_token_queries_pool_over_valid_tokens_only(pooling):
    tokens = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]])  # (1, 3, 2), last token is padding
    mask = torch.tensor([[True, True, False]])
    expected = {"mean": [2.0, -1.0], "max": [3.0, 2.0], "first": [1.0, 2.0]}[pooling]
    torch.testing.assert_close(pool_query_tokens(tokens, mask, pooling), torch.tensor([expected]))


def test_token_queries_ignore_padding_end_to_end():
    torch.manual_seed(0)
    model = AMDNet(ModelConfig(hidden_size=16), video_dim=6, query_dim=5).eval()
    tokens = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    padded_differently = tokens.clone()
    padded_differently[1, 2:] = 99.0
    encoded = model.encode_queries(tokens, mask)
    assert encoded.shape == (2, 16)
    torch.testing.assert_close(encoded, model.encode_queries(padded_differently, mask))
    torch.testing.assert_close(encoded[1:], model.encode_queries(tokens[1:, :2].mean(dim=1)))


def test_standardized_video_inputs_use_the_stored_statistics():
    config = ModelConfig(hidden_size=32, standardize_video=True, input_dropout=0.0, dropout=0.0)
    model = AMDNet(config, video_dim=6, query_dim=5).eval()
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in AMDNet(ModelConfig(hidden_size=32), 6, 5).parameters())  # buffers only
    mean, std = torch.arange(6.0), torch.full((6,), 2.0)
    model.set_video_statistics(mean, std)
    clips = torch.randn(2, 32, 6)
    reference = AMDNet(ModelConfig(hidden_size=32, input_dropout=0.0, dropout=0.0), 6, 5).eval()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("video_mean", "video_std")})
    with torch.no_grad():
        torch.testing.assert_close(model.encode_videos(clips).clip_features,
                                   reference.encode_videos((clips - mean) / std).clip_features)
    assert {"video_mean", "video_std"} <= set(model.state_dict())  # checkpoints carry them


def test_dropout_after_position_embedding_uses_the_input_dropout_rate():
    """The reference drops LayerNorm(x + P) at the input-dropout rate, not at the dropout rate."""
    model = AMDNet(ModelConfig(hidden_size=16, input_dropout=0.0, dropout=0.9), video_dim=6, query_dim=5).train()
    seen = []
    model.video_dropout.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    model.encode_videos(torch.randn(2, 32, 6))
    (normalised, dropped), = seen
    torch.testing.assert_close(dropped, normalised)  # rate 0: nothing dropped despite dropout=0.9
    assert AMDNet(ModelConfig(hidden_size=16, input_dropout=0.3, dropout=0.1), 6, 5).video_dropout.p == 0.3
