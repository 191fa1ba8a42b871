"""The mini-suite's training recipes (schedule, repeated-chunk text) and what its tasks record
beyond the statistics (top1 position, attention-sink share), checked against independent
computations on the tiny preset's scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _models import layer_outputs

from massact.dataset import load_dataset
from massact.report._doc_builder import _Doc
from massact.report._location import location_table, write_location_section
from massact.sources import MINI_PRESETS, MiniArch, train_mini_suite
from massact.sources._mini_corpus import REPEAT_CHUNK, probe_set, split_corpus, text_form
from massact.sources._mini_train import build_model, lr_factor

_WORDS = b"def return self import class for in if else the of a to is value list".split()
CORPUS = b" ".join(np.random.default_rng(1).choice(_WORDS, 6000)) + b"\n"


def _chunks(text: bytes, data: bytes) -> list[bytes]:
    """Split a 'repeat' text back into its chunks, reading the original data alongside."""
    out, i, j = [], 0, 0
    lo, hi = REPEAT_CHUNK
    while i < len(text):
        rest = len(data) - j  # the last chunk may be shorter than lo
        if i + 2 * rest == len(text) and rest <= hi:
            n = rest
        else:
            n = next(n for n in range(lo, hi + 1) if text[i : i + n] == text[i + n : i + 2 * n])
        out.append(text[i : i + n])
        i, j = i + 2 * n, j + n
    return out


def test_repeat_text_writes_each_short_chunk_twice():
    data = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    text = text_form(data, "repeat")
    assert text == text_form(data, "repeat"), "deterministic"
    assert text_form(data, "plain") is data
    assert len(text) == 2 * len(data)
    chunks = _chunks(text, data)  # random bytes: a chunk repeats only where it was written twice
    assert b"".join(chunks) == data
    lo, hi = REPEAT_CHUNK
    assert all(lo <= len(c) <= hi for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= hi
    assert len({len(c) for c in chunks}) > (hi - lo) // 2, "lengths vary over the range"
    with pytest.raises(ValueError, match="unknown text form"):
        text_form(data, "shuffled")


def test_schedules_after_warmup():
    cos = MiniArch(2, 16, 2, steps=100, warmup=10)
    const = MiniArch(2, 16, 2, steps=100, warmup=10, schedule="constant")
    for arch in (cos, const):
        assert [lr_factor(arch, s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(cos, 10) == 1.0 and math.isclose(lr_factor(cos, 100), 0.1)
    assert math.isclose(lr_factor(cos, 55), 0.55)
    assert all(lr_factor(const, s) == 1.0 for s in range(10, 200))
    wsd = MiniArch(2, 16, 2, steps=100, warmup=10, schedule="wsd")  # decays over the last 30
    assert [lr_factor(wsd, s) for s in (9, 10, 69, 70)] == [1.0, 1.0, 1.0, 1.0]
    assert math.isclose(lr_factor(wsd, 85), 0.55) and math.isclose(lr_factor(wsd, 100), 0.1)
    factors = [lr_factor(wsd, s) for s in range(70, 101)]
    assert all(a > b for a, b in zip(factors, factors[1:])), "decreasing over the decay"


def test_bad_recipes():
    with pytest.raises(ValueError, match="schedule must be one of"):
        MiniArch(2, 16, 2, schedule="linear")
    with pytest.raises(ValueError, match="text must be one of"):
        MiniArch(2, 16, 2, text="shuffled")
    with pytest.raises(ValueError, match="weight_decay"):
        MiniArch(2, 16, 2, weight_decay=-0.1)


def _independent_sink_share(model, probe: torch.Tensor) -> np.ndarray:
    """[L, n] max over heads of the mean weight on key 0, from an eager forward's attentions."""
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        att = model(input_ids=probe, output_attentions=True).attentions
    model.config._attn_implementation = "sdpa"
    out = np.zeros((len(att), probe.shape[0]))
    for layer, a in enumerate(att):  # [n, heads, q, k]
        for i in range(probe.shape[0]):
            out[layer, i] = max(float(a[i, h, 1:, 0].mean()) for h in range(a.shape[1]))
    return out


def test_repeat_constant_recipe_records_where_the_top1_sits(tmp_path):
    arch = MiniArch(
        2, 16, 2, 2, steps=6, batch=2, seq_len=16, warmup=2, n_regular=2, weight_decay=0.1,
        schedule="constant", text="repeat",
    )  # fmt: skip
    train_mini_suite(tmp_path, [arch], corpus=CORPUS, progress=False, seed=2, n_probe=4)
    ds = load_dataset(tmp_path)
    row = ds.architectures.iloc[0]
    assert (row["schedule"], row["text"], row["weight_decay"]) == ("constant", "repeat", 0.1)
    _, held = split_corpus(text_form(CORPUS, "repeat"))
    probe = probe_set(held, seed=2, n_probe=4, seq_len=arch.seq_len)
    model = build_model(arch, seed=2).eval()
    outs = layer_outputs(model, input_ids=probe, layers=model.gpt_neox.layers)
    got = ds.stats.query("step == 0").sort_values(["layer", "sample"])
    flat = torch.stack([h.abs().reshape(4, -1) for h in outs])  # [L, n, S*d]
    # stable descending sort: the first index of the maximum, as the tie rule says
    first = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., 0].reshape(-1)
    assert np.array_equal(got["top1_token"].to_numpy(), (first // arch.d).numpy())
    assert np.array_equal(got["top1_channel"].to_numpy(), (first % arch.d).numpy())
    sink = _independent_sink_share(model, probe).reshape(-1)
    np.testing.assert_allclose(got["bos_attention"].to_numpy(), sink, rtol=1e-5, atol=1e-7)
    assert ((got["bos_attention"] >= 0) & (got["bos_attention"] <= 1)).all()

    table = location_table(ds)
    last = ds.stats[ds.stats["step"] == arch.steps]
    assert len(table) == arch.L
    for layer in range(arch.L):
        rows = last[last["layer"] == layer]
        entry = table.loc[(arch.name, layer)]
        assert entry["top1 on token 0"] == (rows["top1_token"] == 0).mean()
        assert entry["channel share"] == rows["top1_channel"].value_counts().iloc[0] / len(rows)
        assert math.isclose(entry["sink share"], rows["bos_attention"].mean())

    # a dataset without the position columns (the paper's archive): no table, a clear reason
    ds.stats = ds.stats.drop(columns=["top1_token", "top1_channel"])
    with pytest.raises(KeyError, match="no top1_token / top1_channel"):
        location_table(ds)

    doc = _Doc()  # the report's document builder
    write_location_section(doc, ds, tmp_path, tmp_path, tmp_path)
    assert doc.md[0].endswith("## Where the massive activations sit")
    assert doc.md[1].startswith("Not recorded") and len(doc.md) == 2


def test_fast_and_standard_presets_use_the_sink_recipe():
    for name, schedule in (("fast", "constant"), ("standard", "cosine")):
        for arch in MINI_PRESETS[name]:
            assert (arch.text, arch.schedule) == ("repeat", schedule)
            assert arch.weight_decay > 0
    standard = MINI_PRESETS["standard"]
    assert len(standard) >= 12
    assert {a.mlp_ratio for a in standard} >= {2, 4, 8}
    assert len({a.H / a.d for a in standard}) >= 3 and len({a.d / a.L for a in standard}) >= 4
