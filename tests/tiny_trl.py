"""The tiny offline Llama and datasets for real TRL trainer tests (kept in examples/tiny_model.py,
which the examples use too; this module keeps the tests' import path)."""

from __future__ import annotations

from examples.tiny_model import (  # noqa: F401 - re-exported
    WORDS,
    _corpus,
    build_tiny_model,
    kto_dataset,
    preference_dataset,
    prompt_dataset,
    reward_len,
    sft_dataset,
)

__all__ = ["WORDS", "build_tiny_model", "kto_dataset", "preference_dataset", "prompt_dataset",
           "reward_len", "sft_dataset"]
