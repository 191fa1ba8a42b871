"""Fake checkpointed suites on disk: save_pretrained folders of tiny models (no network).

A word-level tokenizer over WORDS (EOS id 0, unknown 1), a corpus of those words, and
`save_checkpoint` writing a model with the tokenizer into a folder, as a real checkpoint
revision looks on disk (config, safetensors, tokenizer files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(60)]
VOCAB = len(WORDS) + 2


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>"
    )


def write_corpus(path: Path, lines: int = 20, seed: int = 0) -> Path:
    """`lines` lines of 12 words drawn with `seed`."""
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(lines)))
    return path


def save_checkpoint(folder: Path, model, tokenizer=None) -> Path:
    """save_pretrained of the model and (default: word_tokenizer) its tokenizer."""
    model.save_pretrained(folder)
    (tokenizer or word_tokenizer()).save_pretrained(folder)
    return folder
