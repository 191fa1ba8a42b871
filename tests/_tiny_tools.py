"""Offline stand-ins for what probing tools load from the Hub: a tiny tokenizer and tiny bridges.

`tiny_tokenizer(vocab)`: a word-level fast tokenizer whose tokens are "t0", "t1", ... (one per
id, split on whitespace, unknown words -> t0), built in memory, so that nnsight's
`LanguageModel` / `TransformersModel` and TransformerLens 4's `TransformerBridge` get a real
tokenizer without a download. `tiny_bridge(model)`: TransformerLens 4's TransformerBridge booted
from a randomly initialised HF model object (`boot_transformers(..., hf_model=, tokenizer=)`: the
config comes from the model, nothing is fetched).
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def tiny_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Token "t<i>" has id i. No BOS token: TransformerLens rebuilds a tokenizer that has one
    from its Hub name (which an in-memory tokenizer lacks), and uses it as it is otherwise."""
    words = {f"t{i}": i for i in range(vocab)}
    backend = Tokenizer(models.WordLevel(words, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="t0", eos_token="t1", pad_token="t1"
    )


def tiny_bridge(model, name: str = "EleutherAI/pythia-14m"):
    """A TransformerBridge (TransformerLens 4) around `model`, with raw (unprocessed) weights.

    `name` is only recorded (cfg.model_name): the architecture adapter comes from
    `model.config`, and with `hf_model` and `tokenizer` given nothing is downloaded.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tiny_tokenizer(model.config.vocab_size), device="cpu"
    )
