"""`clip-text`: the text tower of an open_clip model, one projected vector per caption.

AMDNet's reference text inputs are OpenAI CLIP ViT-B/32 text features: for each query the
projected end-of-text token (`encode_text`, 512-d, not L2-normalised), i.e.
`create_extractor("clip-text", model="ViT-B-32", pretrained="openai")`. Model names and
`pretrained` work as for the `clip` image extractor.
"""

from functools import lru_cache

import numpy as np
import open_clip
import torch

from amdnet.config import resolve_device
from extractors.clip_image import create_clip_model
from extractors.registry import TextExtractor, TextFeatures, batched, check_texts, inference_context, register_extractor

# Texts whose token ids are remembered: a stage asks for a chunk's token counts (the cut policy,
# extractors/text_policy.py) and then encodes the same chunk, so each text is tokenised once.
_REMEMBERED_TEXTS = 4096


@register_extractor("clip-text")
class ClipTextEncoder(TextExtractor):
    """open_clip text encoder; each text gives TextFeatures(tokens=(1, dim), pooled=(dim,)), both the
    projected end-of-text embedding. Texts longer than `max_length` tokens (the model's context
    length, start and end tokens included) are truncated, as CLIP's tokenizer does.
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 256,
        progress: bool = False,
    ):
        self.device = resolve_device(device)
        clip = create_clip_model(model, pretrained, seed)
        # Drop the image tower: about half the weights, never used here.
        clip.visual = torch.nn.Identity()
        self._clip = clip.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self._token_ids = lru_cache(maxsize=_REMEMBERED_TEXTS)(self.tokenizer.encode)  # text -> its ids, uncut
        self.max_length = self.tokenizer.context_length
        self.dim = open_clip.get_model_config(model)["embed_dim"]
        self.batch_size = batch_size
        self.progress = progress

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(self._token_ids(text)) + 2 for text in texts]  # + start and end tokens

    def encode(self, texts: list[str]) -> list[TextFeatures]:
        """One projected end-of-text vector per text, in input order."""
        check_texts(texts)
        embeddings = [np.zeros((0, self.dim), dtype=np.float32)]
        with inference_context(self.device):
            for batch in batched(texts, self.batch_size, self.progress, "ClipTextEncoder"):
                tokens = self._token_tensor(batch).to(self.device)  # (B, context_length) token ids
                embeddings.append(self._clip.encode_text(tokens).float().cpu().numpy())  # (B, dim)
        return [TextFeatures(tokens=vector[None], pooled=vector) for vector in np.concatenate(embeddings)]

    def _token_tensor(self, texts: list[str]) -> torch.Tensor:
        """(B, context_length) token ids, what ``self.tokenizer(texts)`` makes (start, text, end, zeros;
        a text over the limit cut, its last kept token replaced by the end token), from the remembered ids."""
        start, end = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        result = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [start, *self._token_ids(text), end][: self.max_length]
            ids[-1] = end
            result[row, : len(ids)] = torch.tensor(ids)
        return result
