"""A tiny Llama and tokenizer built offline, for running real TRL trainers on CPU.

Used by the ``trl_*_guarded.py`` examples and (through ``tests/tiny_trl.py``) by the tests.

No hub is reachable: the tokenizer is trained in memory with ``tokenizers``, the model is built
from a config, both are saved to a folder whose path is passed to trainers (DPO, KTO, RLOO and
GRPO with beta > 0 reload their reference model from that path).

    path = build_tiny_model(tmp_path / "tiny")        # a str path
    trainer = SFTTrainer(model=path, args=SFTConfig(...), train_dataset=sft_dataset())
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["WORDS", "build_tiny_model", "kto_dataset", "preference_dataset", "prompt_dataset",
           "reward_len", "sft_dataset"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "the", "cat", "dog", "sat", "on", "mat", "good", "bad", "yes", "no", "answer", "question",
    "red", "blue", "green", "one", "two", "three", "four", "five", "is", "a", "an", "and",
    "or", "not", "very", "short", "long", "reply", "hello", "world", "model", "train",
]


def _corpus(n: int = 200) -> list[str]:
    import random
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def build_tiny_model(path: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2) -> str:
    """Build and save a tiny Llama causal LM and its tokenizer at ``path``; return the path."""
    out = Path(path)
    if (out / "config.json").exists():
        return str(out)
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    import torch
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def sft_dataset(n: int = 16):  # type: ignore[no-untyped-def]
    """Plain-text SFT rows."""
    from datasets import Dataset
    return Dataset.from_dict({"text": _corpus(n)})


def preference_dataset(n: int = 16):  # type: ignore[no-untyped-def]
    """prompt/chosen/rejected rows for DPO, ORPO, CPO and reward training."""
    from datasets import Dataset
    texts = _corpus(3 * n)
    return Dataset.from_dict({"prompt": texts[:n], "chosen": texts[n:2 * n],
                              "rejected": texts[2 * n:]})


def kto_dataset(n: int = 16):  # type: ignore[no-untyped-def]
    """prompt/completion/label rows for KTO."""
    from datasets import Dataset
    texts = _corpus(2 * n)
    return Dataset.from_dict({"prompt": texts[:n], "completion": texts[n:],
                              "label": [i % 2 == 0 for i in range(n)]})


def prompt_dataset(n: int = 16):  # type: ignore[no-untyped-def]
    """prompt-only rows for GRPO, RLOO and online DPO."""
    from datasets import Dataset
    return Dataset.from_dict({"prompt": _corpus(n)})


def reward_len(completions, **kwargs):  # type: ignore[no-untyped-def]
    """A reward function: shorter completions score higher."""
    return [-len(c) / 20.0 for c in completions]
