"""Padded batches: the probing tools count only the real tokens, and `skip_first` leaves out the
first real tokens (issue 10).

The main test runs each sequence alone, unpadded, and the same sequences as one left- or
right-padded batch, on the GPTNeoX, GPT-2 and Llama layouts (tiny random models, float32).
Two comparisons, because the padded forward pass does not give bit-identical hidden states:
the real tokens' states of a batch padded to 16 differ from the unpadded run's in the last bits
(up to ~4e-7 of the layer's largest |h| here, the same for left and right padding and for a
batch of one padded sequence: matmul and softmax reductions over 16 positions instead of n
round differently), so

1. exact: the masked statistics of the padded run are bit-identical to the unmasked oracle
   (`reference_layer_stats`) of the real rows cut out of the same pass's hidden states, with
   its token index mapped back to the padded position. This is what masking must get right:
   which values count, the tie order and the ORIGINAL positions.
2. close: against the unpadded run, top values and median agree to rtol 1e-5 (measured here:
   at most 5.1e-7, about 4 float32 ulps; 1e-5 leaves room for another BLAS, while a counted
   pad token moves a median by percents), and the top-k positions (token shifted by the
   padding, channel) are equal.

Left padding needs the positions Hugging Face's `generate` passes (`cumsum(mask) - 1`): the
three models number positions 0..S-1 otherwise, and their real tokens would be other tokens.
"""

import dataclasses

import pytest
import torch
from _cases import assert_stats_equal
from _models import layer_outputs, tiny_gpt2, tiny_llama, tiny_neox, tiny_t5
from _tiny_tools import tiny_tokenizer

from massact import (
    LayerStats,
    collect_layer_stats,
    reference_layer_stats,
    stats_of,
    transformer_lens_hook,
)

VOCAB, D, L, K, PAD = 64, 32, 2, 3, 1
LENGTHS = (6, 16, 3, 11)  # one sequence as long as the batch: nothing to pad there
SEQ = max(LENGTHS)
RTOL = 1e-5

BUILDERS = {
    "neox": lambda: tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L),
    "gpt2": lambda: tiny_gpt2(vocab_size=VOCAB, n_embd=D, n_layer=L),
    "llama": lambda: tiny_llama(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L),
}


def sequences() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(2, VOCAB, (n,), generator=gen) for n in LENGTHS]


def padded(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [batch, SEQ], padded with PAD on `side`."""
    ids = torch.full((len(seqs), SEQ), PAD)
    mask = torch.zeros(len(seqs), SEQ, dtype=torch.int64)
    for b, seq in enumerate(seqs):
        where = slice(SEQ - len(seq), SEQ) if side == "left" else slice(0, len(seq))
        ids[b, where], mask[b, where] = seq, 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """The position ids HF's generate passes for a padded batch: real tokens count from 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample(stats: LayerStats, b: int) -> LayerStats:
    fields = ("top", "top_token", "top_channel", "median", "ratio")
    return LayerStats(**{name: getattr(stats, name)[b] for name in fields})


def oracle_of_rows(h: torch.Tensor, rows: torch.Tensor) -> LayerStats:
    """Unmasked oracle of h[rows] ([S, d], rows bool [S]), token index mapped back to h's."""
    where = rows.nonzero().flatten()
    st = reference_layer_stats(h[where], K)
    return dataclasses.replace(st, top_token=where[st.top_token])


@pytest.mark.parametrize("skip_first", [0, 1], ids=["all_tokens", "skip_bos"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_padded_batch_gives_the_statistics_of_the_sequences_alone(build, side, skip_first):
    model, seqs = build(), sequences()
    alone = []
    for seq in seqs:
        with torch.no_grad(), collect_layer_stats(model, K, skip_first=skip_first) as col:
            model(seq[None])
        alone.append(col.passes[0])
    ids, mask = padded(seqs, side)
    with collect_layer_stats(model, K, skip_first=skip_first) as col:
        hidden = layer_outputs(model, ids, attention_mask=mask, position_ids=positions(mask))
    assert len(col.passes) == 1 and len(hidden) == L
    for layer, (got, h) in enumerate(zip(col.passes[0], hidden, strict=True)):
        for b, seq in enumerate(seqs):
            start = SEQ - len(seq) if side == "left" else 0  # the first real token
            rows = torch.zeros(SEQ, dtype=torch.bool)
            rows[start + skip_first : start + len(seq)] = True
            assert_stats_equal(sample(got, b), oracle_of_rows(h[b], rows))  # 1. exact
            want = sample(alone[b][layer], 0)  # 2. close to the sequence run alone
            torch.testing.assert_close(sample(got, b).top, want.top, rtol=RTOL, atol=0)
            torch.testing.assert_close(sample(got, b).median, want.median, rtol=RTOL, atol=0)
            assert torch.equal(sample(got, b).top_token, want.top_token + start)
            assert torch.equal(sample(got, b).top_channel, want.top_channel)


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_mask_is_read_from_the_forward_call(side):
    """model(**batch) with a tokenizer's BatchEncoding, and the mask passed positionally, give
    the statistics of an explicit attention_mask=; attention_mask=None counts every token."""
    model = BUILDERS["llama"]()
    tok = tiny_tokenizer(VOCAB)
    tok.padding_side = side
    batch = tok.pad({"input_ids": [seq.tolist() for seq in sequences()]}, return_tensors="pt")
    assert batch["attention_mask"].shape == (len(LENGTHS), SEQ)
    assert not batch["attention_mask"].all()
    calls = {
        "keywords": ((), dict(batch)),
        "positional": ((batch["input_ids"], batch["attention_mask"]), {}),
    }
    with collect_layer_stats(model, K, attention_mask=batch["attention_mask"]) as explicit:
        hidden = layer_outputs(model, **batch)
    for args, kwargs in calls.values():
        with torch.no_grad(), collect_layer_stats(model, K) as col:
            model(*args, **kwargs)
        for got, want in zip(col.passes[0], explicit.passes[0], strict=True):
            assert_stats_equal(got, want)
    for got, h in zip(explicit.passes[0], hidden, strict=True):
        for b in range(len(LENGTHS)):
            assert_stats_equal(
                sample(got, b), oracle_of_rows(h[b], batch["attention_mask"][b] == 1)
            )
    with torch.no_grad(), collect_layer_stats(model, K, attention_mask=None) as everything:
        model(**batch)
    for got, h in zip(everything.passes[0], hidden, strict=True):
        assert_stats_equal(got, reference_layer_stats(h, K))


def test_a_call_without_a_mask_after_one_with_a_mask_counts_every_token():
    """A call's mask is forgotten when it returns, also when it was refused (a 4D mask)."""
    model = BUILDERS["neox"]()
    ids, mask = padded(sequences(), "right")
    with torch.no_grad(), collect_layer_stats(model, K) as col:
        model(ids, attention_mask=mask)
        with pytest.raises(ValueError, match="2D"):
            model(ids, attention_mask=mask[:, None, None, :])
        model(ids)
    hidden = layer_outputs(model, ids)
    for got, h in zip(col.passes[-1], hidden, strict=True):
        assert_stats_equal(got, reference_layer_stats(h, K))


def test_skip_first_without_a_mask_leaves_out_the_first_positions():
    model = BUILDERS["gpt2"]()
    ids = sequences()[1][None].repeat(2, 1)
    with collect_layer_stats(model, K, skip_first=2) as col:
        hidden = layer_outputs(model, ids)
    rows = torch.arange(SEQ) >= 2
    for got, h in zip(col.passes[0], hidden, strict=True):
        for b in range(2):
            assert_stats_equal(sample(got, b), oracle_of_rows(h[b], rows))


def test_a_sequence_with_no_token_left_has_nan_statistics():
    """skip_first as long as a sequence leaves nothing: NaN values, -1 positions; one real
    token of d values and k > d leaves NaN top entries after the real ones."""
    h = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]])
    (st,) = stats_of(h, K, mask=mask, skip_first=1)
    assert_stats_equal(sample(st, 0), oracle_of_rows(h[0], torch.tensor([0, 1, 1, 0, 0]) == 1))
    assert st.top[1].isnan().all() and st.median[1].isnan() and st.ratio[1].isnan()
    assert (st.top_token[1] == -1).all() and (st.top_channel[1] == -1).all()
    assert st.top[2, :2].isfinite().all() and st.top[2, 2].isnan() and st.top_token[2, 2] == -1
    assert st.top_token[2, :2].tolist() == [4, 4]


def test_stats_of_and_transformer_lens_hook_take_a_mask():
    h = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    kept = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    sink = []
    transformer_lens_hook(sink, K, mask=mask, skip_first=1)(h, None)
    (from_tensors,) = stats_of([h], K, mask=mask.long(), skip_first=1)
    for st in (sink[0][1], from_tensors):
        for b in range(2):
            assert_stats_equal(sample(st, b), oracle_of_rows(h[b], kept[b]))
    (float_mask,) = stats_of(h, K, mask=mask.float())  # a 0/1 float mask reads as bool
    (bool_mask,) = stats_of(h, K, mask=mask)
    assert_stats_equal(float_mask, bool_mask)
    (one_row,) = stats_of(h, K, mask=mask[0])  # broadcast over the batch
    assert_stats_equal(sample(one_row, 1), oracle_of_rows(h[1], mask[0]))


def test_generate_with_a_cache_counts_the_real_tokens_of_every_step():
    """Decoding steps see [batch, 1, d] while the mask covers every token so far: its last
    column counts; the prefill pass drops the left padding."""
    model = BUILDERS["llama"]()
    ids, mask = padded(sequences(), "left")
    caught = []
    hooks = [
        layer.register_forward_hook(lambda m, a, out: caught.append(out.detach().clone()))
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad(), collect_layer_stats(model, K, skip_first=1) as col:
            model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                           pad_token_id=PAD)  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    assert len(col.passes) == 3 and [h.shape[1] for h in caught[::L]] == [SEQ, 1, 1]
    for p, stats in enumerate(col.passes):
        for layer, got in enumerate(stats):
            h = caught[p * L + layer]
            for b, n in enumerate(LENGTHS):
                rows = torch.zeros(h.shape[1], dtype=torch.bool)
                rows[SEQ - n + 1 :] = True  # the first real token is left out
                if p > 0:
                    rows[:] = True
                assert_stats_equal(sample(got, b), oracle_of_rows(h[b], rows))


def test_encoder_decoder_stacks_use_their_own_masks():
    """T5: the encoder counts the attention_mask's tokens, the decoder the
    decoder_attention_mask's; `generate` runs the encoder on its own and it still counts."""
    model = tiny_t5(vocab_size=VOCAB, d_model=D)
    ids, mask = padded(sequences()[:2], "right")
    target = ids[:, :5]
    target_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    layers = [*model.encoder.block, *model.decoder.block]
    with collect_layer_stats(model, K) as col:
        hidden = layer_outputs(model, ids, attention_mask=mask, decoder_input_ids=target,
                               decoder_attention_mask=target_mask, layers=layers)  # fmt: skip
    n_enc = len(model.encoder.block)
    for i, (got, h) in enumerate(zip(col.passes[0], hidden, strict=True)):
        rows = mask if i < n_enc else target_mask
        for b in range(2):
            assert_stats_equal(sample(got, b), oracle_of_rows(h[b], rows[b] == 1))
    with torch.no_grad(), collect_layer_stats(model, K, layers=["encoder.0"]) as gen:
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
    for b in range(2):
        assert_stats_equal(sample(gen.passes[0][0], b), oracle_of_rows(hidden[0][b], mask[b] == 1))


BAD = {
    "4d_in_call": (
        dict(),
        lambda ids, mask: dict(attention_mask=mask[:, None, None, :].bool()),
        ValueError,
        "must be a 2D \\[batch, seq\\] padding mask",
    ),
    "additive_float": (
        dict(),
        lambda ids, mask: dict(attention_mask=(1 - mask.float()) * -1e9),
        ValueError,
        "values other than 0 and 1",
    ),
    "batch_mismatch": (
        dict(attention_mask=torch.ones(3, SEQ)),
        lambda ids, mask: {},
        ValueError,
        "does not fit layer 0's hidden state \\[4, 16, 32\\]",
    ),
    "longer_sequence": (
        dict(attention_mask=torch.ones(4, 4)),
        lambda ids, mask: {},
        ValueError,
        "the attention mask \\[4, 4\\] does not fit",
    ),
    "bad_skip_first": (dict(skip_first=-1), lambda ids, mask: {}, ValueError, "skip_first"),
    "bool_skip_first": (dict(skip_first=True), lambda ids, mask: {}, ValueError, "skip_first"),
    "bad_mode": (dict(attention_mask="yes"), lambda ids, mask: {}, ValueError, "'auto', None"),
    "not_a_tensor": (dict(attention_mask=[[1, 1]]), lambda ids, mask: {}, TypeError, "tensor"),
}


@pytest.mark.parametrize("options, call, error, match", BAD.values(), ids=BAD.keys())
def test_bad_masks_get_a_clear_error(options, call, error, match):
    model = BUILDERS["neox"]()
    ids, mask = padded(sequences(), "right")
    with pytest.raises(error, match=match):  # on entering the block or in the call
        with torch.no_grad(), collect_layer_stats(model, K, **options):
            model(ids, **call(ids, mask))
    with torch.no_grad(), collect_layer_stats(model, K) as col:  # hooks gone, state cleared
        model(ids)
    assert len(col.passes) == 1


def test_stats_of_mask_errors():
    h = torch.randn(2, 7, 4)
    with pytest.raises(ValueError, match=r"mask of shape \[3, 7\] does not broadcast"):
        stats_of(h, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="skip_first"):
        transformer_lens_hook([], skip_first=1.5)


def test_transformer_bridge_reads_the_mask_it_is_called_with():
    """TransformerLens 4: bridge(tokens, attention_mask=...) is read like a HF call."""
    from _tiny_tools import tiny_bridge

    bridge = tiny_bridge(BUILDERS["neox"]())
    ids, mask = padded(sequences(), "right")
    with collect_layer_stats(bridge, K) as col:
        hidden = layer_outputs(bridge, ids, attention_mask=mask, layers=list(bridge.blocks))
    with torch.no_grad(), collect_layer_stats(bridge, K, attention_mask=mask) as explicit:
        bridge(ids, attention_mask=mask)
    for got, want, h in zip(col.passes[0], explicit.passes[0], hidden, strict=True):
        assert_stats_equal(got, want)
        for b in range(len(LENGTHS)):
            assert_stats_equal(sample(got, b), oracle_of_rows(h[b], mask[b] == 1))
