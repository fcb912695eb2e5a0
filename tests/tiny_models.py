"""Overrides that make every registered model small enough for the tiny demo config (conftest.TINY):
one `--set` string for all of them, since each model reads only its own options subsection."""

TINY_MODEL_OPTIONS = {
    "amdnet": {},  # conftest.TINY shrinks it already
    "ms-sl": {"hidden_size": 32, "n_heads": 2, "map_size": 8, "max_frames": 32},
    "gmmformer": {"hidden_size": 32, "n_heads": 2, "map_size": 8, "max_frames": 32},
    "clip-zero-shot": {"max_frames": 32, "max_scale": 4},
}

# MS-SL and GMMFormer read query tokens; AMDNet reads them too, and clip-zero-shot its own CLIP text vector.
TINY_MODELS_SET = " ".join(["train.query_input=tokens", *(f"model.{model}.{key}={value}"
                                                           for model, options in TINY_MODEL_OPTIONS.items()
                                                           for key, value in options.items())])
