"""One mini-suite model: the GPTNeoX config, the optimizer and learning-rate schedule, the
training loop, and the probe task that measures a checkpoint.

The probe task writes, per (layer, probe sequence), the top-k and median of |h| (the dataset
schema) plus where the top1 sits (`top1_token`, `top1_channel`: original positions) and the
attention-sink share `bos_attention`: over the layer's heads, the largest mean attention weight
that the queries after the first put on the first (BOS) token. The attention weights come from a
second, eager forward of the probe set with `output_attentions=True` (SDPA does not return them);
it is cheap next to training: the probe set is a few short sequences.
"""

from __future__ import annotations

import math

import torch

from ..dataset import frame_from_layer_stats
from ._mini_corpus import BOS, VOCAB, int_seed, sample_sequences, weights_sha256
from ._mini_presets import MiniArch

SUITE = "mini"


def model_config(arch: MiniArch):
    """The GPTNeoXConfig of `arch`: parallel residual, rotary on a quarter of each head, no
    dropout, untied embeddings, byte vocabulary + BOS."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=arch.d,
        num_hidden_layers=arch.L,
        num_attention_heads=arch.H,
        intermediate_size=arch.d_ff,
        max_position_embeddings=arch.seq_len,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=BOS,
        use_cache=False,
    )


def build_model(arch: MiniArch, seed: int = 0):
    """A randomly initialised GPTNeoXForCausalLM for `arch` (deterministic for seed, name)."""
    from transformers import GPTNeoXForCausalLM

    config = model_config(arch)
    torch.manual_seed(int_seed("init", seed, arch.name))
    return GPTNeoXForCausalLM(config)


def count_params(arch: MiniArch) -> int:
    """Parameter count of `arch`, built on the meta device (nothing allocated, no RNG used)."""
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(model_config(arch))
    return sum(p.numel() for p in model.parameters())


WSD_DECAY = 0.3  # "wsd": the share of the steps, at the end, that decays the rate


def lr_factor(arch: MiniArch, step: int) -> float:
    """Learning-rate multiplier at `step`: linear warmup, then "constant"; "cosine" to 10% at
    the last step; or "wsd" (warmup-stable-decay): constant, then a cosine to 10% over the last
    WSD_DECAY of the steps."""
    if step < arch.warmup:
        return (step + 1) / arch.warmup
    if arch.schedule == "constant":
        return 1.0
    start = arch.warmup
    if arch.schedule == "wsd":
        start = max(start, round(arch.steps * (1 - WSD_DECAY)))
        if step < start:
            return 1.0
    frac = (step - start) / max(1, arch.steps - start)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def make_optimizer(arch: MiniArch, model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=arch.lr, betas=(0.9, 0.95), weight_decay=arch.weight_decay
    )


def train_loop(arch, model, opt, start, train, seed, device, on_checkpoint, on_state, advance):
    """Steps start..arch.steps: on_checkpoint(step) at every checkpoint, then (below the last
    step) on_state(step); one optimizer step between; advance(1) per training step."""
    checkpoints = set(arch.checkpoints())
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(arch, s), last_epoch=start - 1
    )
    gen = torch.Generator()
    n_train = len(train) - arch.seq_len
    for step in range(start, arch.steps + 1):
        if step in checkpoints:
            on_checkpoint(step)
            if step < arch.steps:
                on_state(step)
        if step == arch.steps:
            break
        gen.manual_seed(int_seed("batch", seed, step))
        offsets = torch.randint(0, n_train, (arch.batch,), generator=gen)
        batch = sample_sequences(train, offsets, arch.seq_len).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        advance(1)


def bos_attention(model, probe: torch.Tensor) -> torch.Tensor:
    """[L, n_probe] sink share: per layer and sequence, the largest over heads of the mean
    attention weight that queries 1.. put on position 0 (nan for a one-token probe)."""
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = "eager"  # SDPA returns no weights
    try:
        attentions = model(input_ids=probe, output_attentions=True).attentions
    finally:
        config._attn_implementation = saved
    # each [n, heads, queries, keys] -> [n, heads] mean over queries 1.. of the weight on key 0
    return torch.stack([a[:, :, 1:, 0].float().mean(-1).amax(-1) for a in attentions])


def probe_task(model, arch: MiniArch, step: int, probe_dev, prov_base: dict, backend: str):
    """(stats frame, provenance) of the model at `step` on the probe set (eval mode inside)."""
    from ..probe import collect_layer_stats

    model.eval()
    with torch.no_grad():
        with collect_layer_stats(model, k=3, backend=backend) as col:
            model(input_ids=probe_dev)
        sink = bos_attention(model, probe_dev).cpu().numpy()  # [L, n]
    df = frame_from_layer_stats(col.passes[0], suite=SUITE, model=arch.name, step=step)
    df["bos_attention"] = sink.reshape(-1).astype("float64")  # rows are layer-major
    prov = {**prov_base, "revision": f"step{step}", "weights_sha256": weights_sha256(model)}
    model.train()
    return df, prov
