"""Probing: hooks on decoder layers of tiny random HF models, and the plain-tensor adapters.

Reference statistics are computed in pure torch (abs -> topk / median on the flattened [S*d]
slice: _cases.ref_stats), independently of massact's backends; selections compare with
torch.equal.
"""

import gc
import weakref

import numpy as np
import pytest
import torch
from _cases import ref_stats
from _models import layer_outputs, tiny_gpt2, tiny_llama, tiny_neox, token_ids

from massact import LayerStats, collect_layer_stats, stats_of, transformer_lens_hook
from massact.probe import decoder_layers

VOCAB, L, D, SEQ, BATCH = 97, 3, 32, 12, 2


def assert_stats_equal(st: LayerStats, h: torch.Tensor, k: int = 3) -> None:
    top, med = ref_stats(h, k)
    assert torch.equal(st.top, top)
    assert torch.equal(st.median, med)
    assert torch.equal(st.ratio, st.top[..., 0] / st.median)


# the three decoder-layer layouts at this file's sizes (seed 0, eval mode)
def neox():
    return tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)


def gpt2():
    return tiny_gpt2(vocab_size=VOCAB, n_embd=D, n_layer=L)


def llama():
    return tiny_llama(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)


def ids(batch: int = BATCH, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return token_ids(VOCAB, batch, seq, seed)


def test_gptneox_last_layer_is_layer_output_not_final_norm():
    model, x = neox(), ids()
    with torch.no_grad(), collect_layer_stats(model) as col:
        out = model(x, output_hidden_states=True)
    hs = out.hidden_states  # L + 1 entries: embeddings, layers 0..L-2 outputs, final-norm output
    assert len(col.passes) == 1 and len(col.passes[0]) == L
    for i in range(L - 1):
        assert_stats_equal(col.passes[0][i], hs[i + 1])
    last = col.passes[0][L - 1]
    top_hs, med_hs = ref_stats(hs[-1])
    # the layer output is not the final-layer-norm output HF reports as hidden_states[-1] ...
    assert not torch.allclose(last.median, med_hs) and not torch.allclose(last.top, top_hs)
    # ... but exactly what a hook on the last layer sees
    assert_stats_equal(last, layer_outputs(model, x)[-1])


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2-transformer.h", "llama-model.layers"])
def test_other_layouts_match_manual_hooks(build):
    model, x = build(), ids()
    assert len(decoder_layers(model)) == L
    with torch.no_grad(), collect_layer_stats(model, k=2) as col:
        model(x)
    caught = layer_outputs(model, x)
    assert [st.top.shape for st in col.passes[0]] == [torch.Size([BATCH, 2])] * L
    for st, h in zip(col.passes[0], caught, strict=True):
        assert_stats_equal(st, h, k=2)


def test_base_model_and_pass_grouping():
    model, x = neox(), ids()
    assert len(decoder_layers(model.gpt_neox)) == L
    with torch.no_grad(), collect_layer_stats(model) as col:
        model(x)
        model.gpt_neox(x[:1])  # bypasses the top-level pre-hook: grouped by layer order
        model(x)
    assert [len(p) for p in col.passes] == [L, L, L]
    assert col.passes[1][0].top.shape == (1, 3)
    assert torch.equal(col.passes[0][1].top, col.passes[2][1].top)
    col.clear()
    assert col.passes == [] and len(col.table()) == 0


def test_layer_subset_and_table():
    model, x = neox(), ids()
    with torch.no_grad(), collect_layer_stats(model, k=4, layers=[-1, 1]) as col:
        model(x)
        model(x[:, :5])
    t = col.table()
    assert list(t.columns) == [
        "pass",
        "layer",
        "sample",
        "top1",
        "top2",
        "top3",
        "top4",
        "median",
        "ratio",
    ]
    assert len(t) == 2 * 2 * BATCH
    # hooks fire in execution order: layer 1 before layer L-1
    assert t["layer"].tolist()[:4] == [1, 1, L - 1, L - 1]
    assert t["sample"].tolist()[:2] == [0, 1]
    caught = layer_outputs(model, x)
    row = t[(t["pass"] == 0) & (t["layer"] == 1) & (t["sample"] == 1)].iloc[0]
    top, med = ref_stats(caught[1][1], 4)
    assert row[["top1", "top2", "top3", "top4"]].tolist() == top.double().tolist()
    assert row["median"] == med.item()
    assert (t["top1"] >= t["top2"]).all() and (
        t["top1"] / t["median"] - t["ratio"]
    ).abs().max() < 1e-5


def test_hooks_removed_on_exit_and_on_error():
    model, x = neox(), ids()
    layers = decoder_layers(model)
    with pytest.raises(RuntimeError, match="boom"):
        with collect_layer_stats(model):
            assert all(len(layer._forward_hooks) == 1 for layer in layers)
            raise RuntimeError("boom")
    # an error raised inside a hook (k larger than S * d) propagates and still cleans up
    with pytest.raises(ValueError, match="k must satisfy"):
        with torch.no_grad(), collect_layer_stats(model, k=SEQ * D + 1):
            model(x)
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    assert len(model._forward_pre_hooks) == 0


def test_keeps_no_hidden_states_or_graph():
    model, x = neox(), ids()
    model.train()
    refs = []
    layer = decoder_layers(model)[1]
    h = layer.register_forward_hook(lambda m, a, o: refs.append(weakref.ref(o)))
    with collect_layer_stats(model) as col:
        loss = model(x, labels=x).loss
        loss.backward()  # a training step still works with the probe attached
    h.remove()
    del loss
    gc.collect()
    st = col.passes[0][1]
    assert not st.top.requires_grad and st.top.grad_fn is None
    assert refs[0]() is None  # the layer output was freed: the collector holds no reference


def test_errors():
    with pytest.raises(TypeError, match="cannot find the decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        decoder_layers("gpt2")
    model = neox()
    with pytest.raises(ValueError, match="out of range"):
        with collect_layer_stats(model, layers=[L]):
            pass
    with pytest.raises(ValueError, match="positive int"):
        with collect_layer_stats(model, k=0):
            pass
    with pytest.raises(ValueError, match="empty"):
        stats_of([])
    with pytest.raises(TypeError, match="tensor or a sequence"):
        stats_of(3.0)
    with pytest.raises(TypeError, match="list or a callable"):
        transformer_lens_hook("sink")


def test_explicit_modules_outside_known_layout():
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Linear(D, D))
    x = torch.randn(BATCH, SEQ, D)
    with torch.no_grad(), collect_layer_stats(blocks, layers=list(blocks)) as col:
        y = blocks(x)
    assert col.layer_ids == [0, 1]
    assert_stats_equal(col.passes[0][1], y)


def test_stats_of_plain_tensors_and_hidden_state_tuples():
    model, x = neox(), ids()
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states
    stats = stats_of(hs, k=2)
    assert len(stats) == L + 1
    for st, h in zip(stats, hs, strict=True):
        assert_stats_equal(st, h, k=2)
    one = stats_of(hs[1])
    assert len(one) == 1 and one[0].top.shape == (BATCH, 3)
    # a layer-output tuple counts by its first tensor; a stacked tensor splits with unbind
    assert torch.equal(stats_of([(hs[2], None)])[0].top, stats_of(hs[2])[0].top)
    stacked = torch.stack(hs[1:3])
    assert [s.top.shape for s in stats_of(stacked.unbind(0))] == [(BATCH, 3)] * 2
    h = hs[1].clone().requires_grad_(True)
    assert not stats_of(h)[0].top.requires_grad


def test_transformer_lens_hook_adapter():
    class Hook:  # what TransformerLens passes: a HookPoint with a .name
        name = "blocks.0.hook_resid_post"

    act = torch.randn(BATCH, SEQ, D)
    before = act.clone()
    sink: list = []
    fn = transformer_lens_hook(sink, k=2)
    assert fn(act, Hook()) is None and torch.equal(act, before)
    fn(act[0], object())  # unbatched activation, hook without a name
    assert [name for name, _ in sink] == ["blocks.0.hook_resid_post", None]
    assert_stats_equal(sink[0][1], act, k=2)
    assert sink[1][1].top.shape == (2,)
    calls = []
    transformer_lens_hook(lambda name, st: calls.append((name, st.ratio.shape)))(act, Hook())
    assert calls == [("blocks.0.hook_resid_post", torch.Size([BATCH]))]


def test_layers_argument_forms():
    """layers= takes a whole ModuleList, a module, numpy integers and tuples, as well as lists."""
    model, x = neox(), ids()
    forms = {
        "module_list": (model.gpt_neox.layers, [0, 1, 2]),
        "module": (model.gpt_neox.layers[1], [1]),
        "numpy_ints": ([np.int64(2), np.int32(0)], [0, 2]),
        "numpy_int": (np.int64(-1), [L - 1]),
        "tuple": ((2, 1), [1, 2]),
        "name": (["1"], [1]),
    }
    caught = layer_outputs(model, x)
    for form, (layers, want) in forms.items():
        with torch.no_grad(), collect_layer_stats(model, layers=layers) as col:
            model(x)
        assert col.layer_ids == want, form
        assert [len(p) for p in col.passes] == [len(want)], form
        for st, l in zip(col.passes[0], want, strict=True):
            assert_stats_equal(st, caught[l])
    with pytest.raises(TypeError, match="ints, names or modules"):
        with collect_layer_stats(model, layers=[1.5]):
            pass


def test_transformer_lens_hook_records_the_given_name():
    class Hook:  # TransformerLens 4's bridge reports the canonical name of an aliased hook
        name = "blocks.0.hook_out"

    sink: list = []
    act = torch.randn(BATCH, SEQ, D)
    transformer_lens_hook(sink, name="blocks.0.hook_resid_post")(act, Hook())
    transformer_lens_hook(sink)(act, Hook())
    assert [n for n, _ in sink] == ["blocks.0.hook_resid_post", "blocks.0.hook_out"]
    assert torch.equal(sink[0][1].top, sink[1][1].top)
    with pytest.raises(TypeError, match="name must be a str"):
        transformer_lens_hook(sink, name=0)
