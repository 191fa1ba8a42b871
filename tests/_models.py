"""Tiny randomly initialised Hugging Face models, token ids and an independent layer capture.

Every builder makes its model from a config (no download, no network), seeds torch right before
the weights are drawn (the same seed gives the same weights), and returns it in eval mode unless
`train=True`. Keyword overrides are config fields; each test file passes the sizes its
assertions name (its VOCAB, L, D ...), so the defaults here only fill in the rest.
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from massact.probe import decoder_layers

# the sizes GPTNeoX and Llama configs share; GPT-2 names the same ones differently
_SIZES = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def _build(model_cls, config_cls, seed: int, train: bool, fields: dict):
    torch.manual_seed(seed)
    return model_cls(config_cls(**fields)).train(train)  # train(False) is eval()


def tiny_neox(seed: int = 0, *, train: bool = False, **overrides) -> GPTNeoXForCausalLM:
    """A GPTNeoX (Pythia) causal LM: the `gpt_neox.layers` layout, parallel attention + MLP,
    partial rotary embeddings. The Pythia sweeps' checkpoints, the probe's main model and the
    model the training monitor watches. intermediate_size defaults to 4 * hidden_size."""
    fields = {**_SIZES, **overrides}
    fields.setdefault("intermediate_size", 4 * fields["hidden_size"])
    return _build(GPTNeoXForCausalLM, GPTNeoXConfig, seed, train, fields)


def tiny_gpt2(seed: int = 0, *, train: bool = False, **overrides) -> GPT2LMHeadModel:
    """A GPT-2 LM: the `transformer.h` layer layout (learned position embeddings, Conv1D
    projections), for the probe's layout lookup and hooks."""
    fields = dict(
        vocab_size=64,
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _build(GPT2LMHeadModel, GPT2Config, seed, train, {**fields, **overrides})


def tiny_llama(seed: int = 0, *, train: bool = False, **overrides) -> LlamaForCausalLM:
    """A Llama causal LM: the `model.layers` layout (also Mistral, Qwen, ...), grouped-query
    attention (4 query heads share 2 key/value heads), RMSNorm and a gated MLP, for the
    probe's layout lookup and hooks."""
    fields = dict(
        _SIZES,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _build(LlamaForCausalLM, LlamaConfig, seed, train, {**fields, **overrides})


def tiny_t5(seed: int = 0, *, train: bool = False, **overrides) -> T5ForConditionalGeneration:
    """A T5 encoder-decoder: `encoder.block` then `decoder.block`, each stack with its own
    padding mask (`attention_mask`, `decoder_attention_mask`)."""
    fields = dict(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return _build(T5ForConditionalGeneration, T5Config, seed, train, {**fields, **overrides})


def token_ids(vocab: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    """[batch, seq] int64 token ids in [0, vocab), from their own seeded generator (the global
    torch RNG is left alone)."""
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def layer_outputs(model, *args, layers=None, eval_mode: bool = False, **kwargs) -> list:
    """Each decoder layer's output on `model(*args, **kwargs)`, captured with plain forward hooks
    (the independent way, beside massact's probe): the hidden-state tensor (a tuple output's
    first entry), detached and cloned, in execution order. Runs under no_grad.

    layers: the modules to hook (default: massact's `decoder_layers(model)`).
    eval_mode: run the pass with every module in eval mode, then give each module back its own
    training flag (also on error). The hooks are removed in every case.
    """
    caught = []

    def hook(module, inputs, out):
        caught.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    if layers is None:
        layers = decoder_layers(model)
    handles = [layer.register_forward_hook(hook) for layer in layers]
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for m, mode in modes:
            m.training = mode
        for handle in handles:
            handle.remove()
    return caught
