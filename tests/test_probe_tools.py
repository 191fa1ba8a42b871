"""Probing through the real TransformerLens (4.x) and nnsight packages, on tiny random models.

TransformerLens 4 removed `HookedTransformer`; its `TransformerBridge` is booted here from a
randomly initialised HF model object (tests/_tiny_tools.py). TransformerLens 3's
`HookedTransformer` keeps its layers in `blocks`, each ending in a `hook_resid_post` HookPoint;
that layout is rebuilt from TransformerLens's own `HookedRootModule` and `HookPoint` (what
HookedTransformer is made of, still shipped by TL 4). nnsight: `NNsight(model)`,
`LanguageModel` and `TransformersModel` around a tiny GPTNeoX.

Every statistic is compared with torch.equal, field by field, to `layer_stats` of the tensor
the tool itself hands out (a TransformerLens hook's activation, an nnsight saved output).
"""

import huggingface_hub.constants
import nnsight
import pytest
import torch
import transformers
from _cases import assert_stats_equal
from _models import tiny_gpt2, tiny_neox, token_ids
from _tiny_tools import tiny_bridge, tiny_tokenizer
from nnsight import LanguageModel, NNsight
from nnsight.modeling.transformers import TransformersModel
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from massact import collect_layer_stats, layer_stats, stats_of, transformer_lens_hook
from massact.probe import decoder_layers

VOCAB, L, D, SEQ, BATCH = 64, 3, 32, 8, 2


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any Hub request fails at once (huggingface_hub's offline mode): nothing is downloaded."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def ids(seed: int = 1) -> torch.Tensor:
    return token_ids(VOCAB, BATCH, SEQ, seed)


BUILDERS = {
    "gpt2": lambda: tiny_gpt2(vocab_size=VOCAB, n_embd=D, n_layer=L),
    "neox": lambda: tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L),
}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_transformer_bridge(build):
    bridge = tiny_bridge(build())
    blocks = decoder_layers(bridge)
    assert len(blocks) == L and all(a is b for a, b in zip(blocks, bridge.blocks, strict=True))
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    sink, canonical, seen = [], [], {}

    def capture(activation, hook):
        seen[hook.name] = activation.detach().clone()

    hooks = [(n, transformer_lens_hook(sink, name=n)) for n in names]
    hooks += [(n, transformer_lens_hook(canonical)) for n in names[:1]]
    hooks += [(n, capture) for n in names]
    with torch.no_grad(), collect_layer_stats(bridge) as col:
        bridge.run_with_hooks(ids(), fwd_hooks=hooks)
    # the sink records the names hooked; the bridge itself reports its canonical names
    assert [n for n, _ in sink] == names
    assert [n for n, _ in canonical] == ["blocks.0.hook_out"]
    assert sorted(seen) == [f"blocks.{l}.hook_out" for l in range(L)]
    assert len(col.passes) == 1
    for l, (_, st) in enumerate(sink):
        h = seen[f"blocks.{l}.hook_out"]
        assert h.shape == (BATCH, SEQ, D)
        want = layer_stats(h, 3)
        assert_stats_equal(st, want)
        assert_stats_equal(col.passes[0][l], want)  # forward hooks on blocks: the same tensor
    assert_stats_equal(canonical[0][1], layer_stats(seen["blocks.0.hook_out"], 3))


class Block(torch.nn.Module):
    """A residual block shaped like TransformerLens 3's TransformerBlock: resid_pre -> MLP ->
    hook_resid_post, whose output is the block's output."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(D, 2 * D), torch.nn.GELU())
        self.out = torch.nn.Linear(2 * D, D)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid):
        resid = self.hook_resid_pre(resid)
        return self.hook_resid_post(resid + self.out(self.mlp(resid)))


class MiniHookedTransformer(HookedRootModule):
    """TransformerLens 3's HookedTransformer layout: embed, `blocks`, unembed; HookPoint names
    set by `setup()` (blocks.{l}.hook_resid_post)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
        self.unembed = torch.nn.Linear(D, VOCAB)
        self.setup()

    def forward(self, tokens):
        resid = self.embed(tokens)
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(resid)


def test_hooked_transformer_layout():
    model = MiniHookedTransformer().eval()
    assert all(a is b for a, b in zip(decoder_layers(model), model.blocks, strict=True))
    sink: list = []
    with torch.no_grad(), collect_layer_stats(model, k=2) as col:
        _, cache = model.run_with_cache(ids(), names_filter=lambda n: n.endswith("hook_resid_post"))
        model.run_with_hooks(
            ids(),
            fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), transformer_lens_hook(sink, k=2))],
        )
    assert [n for n, _ in sink] == [f"blocks.{l}.hook_resid_post" for l in range(L)]
    assert [len(p) for p in col.passes] == [L, L]
    for l, (name, st) in enumerate(sink):
        want = layer_stats(cache[name], 2)
        assert_stats_equal(st, want)
        assert_stats_equal(col.passes[0][l], want)
        assert_stats_equal(col.passes[1][l], want)


def test_nnsight_wrapper():
    model = tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)
    lm = NNsight(model)
    assert all(a is b for a, b in zip(decoder_layers(lm), model.gpt_neox.layers, strict=True))
    with collect_layer_stats(lm) as col:
        with torch.no_grad(), lm.trace(ids()):
            saved = nnsight.save([layer.output for layer in lm.gpt_neox.layers])
    assert len(saved) == L and isinstance(saved[0], torch.Tensor)
    assert [len(p) for p in col.passes] == [L]
    via_stats_of = stats_of(saved)
    for l, h in enumerate(saved):
        want = layer_stats(h, 3)
        assert_stats_equal(col.passes[0][l], want)
        assert_stats_equal(via_stats_of[l], want)
    # layers given as nnsight envoys
    with collect_layer_stats(lm, k=2, layers=[lm.gpt_neox.layers[2], lm.gpt_neox.layers[0]]) as col:
        with torch.no_grad(), lm.trace(ids()):
            pass
    assert col.layer_ids == [0, 2]
    assert_stats_equal(col.passes[0][1], layer_stats(saved[2], 2))
    assert all(len(layer._forward_hooks) == 0 for layer in model.gpt_neox.layers)


@pytest.mark.parametrize("wrapper", [LanguageModel, TransformersModel])
def test_nnsight_language_model(wrapper):
    model = tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)
    lm = wrapper(model, tokenizer=tiny_tokenizer(VOCAB))
    with collect_layer_stats(lm) as col:
        with torch.no_grad(), lm.trace("t5 t9 t3 t7 t2"):
            saved = nnsight.save([layer.output for layer in lm.gpt_neox.layers])
    assert saved[0].shape == (1, 5, D)
    for got, h in zip(col.passes[0], saved, strict=True):
        assert_stats_equal(got, layer_stats(h, 3))


@pytest.mark.parametrize("wrapper", [LanguageModel, TransformersModel])
def test_nnsight_padded_prompts_count_their_real_tokens(wrapper):
    """A trace over prompts of different lengths pads them (on the left: the wrapper's
    tokenizer setting); the attention mask nnsight passes to the model is read, and the
    statistics are those of the saved outputs under that mask, first token left out."""
    model = tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)
    lm = wrapper(model, tokenizer=tiny_tokenizer(VOCAB))
    prompts = ["t5 t9 t3 t7 t2", "t4 t8"]
    mask = lm.tokenizer(prompts, padding=True, return_tensors="pt").attention_mask
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    with collect_layer_stats(lm, skip_first=1) as col:
        with torch.no_grad(), lm.trace(prompts):
            saved = nnsight.save([layer.output for layer in lm.gpt_neox.layers])
    for got, want in zip(col.passes[0], stats_of(saved, mask=mask, skip_first=1), strict=True):
        assert_stats_equal(got, want)
    assert col.passes[0][0].top_token[1].tolist() == [4, 4, 4]  # one token left: [4, :]


def test_lazy_wrapper_is_dispatched_before_hooking(monkeypatch):
    """`TransformersModel(repo_id)` builds the model on the meta device and loads the weights at
    the first trace (`dispatch`), replacing the module; the hooks must go on the module that will
    run. The loads answer with a tiny model (AutoConfig / AutoModelForCausalLM patched)."""
    real = tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)

    def config(*args, return_unused_kwargs=False, **kwargs):
        return (real.config, {}) if return_unused_kwargs else real.config

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: real)
    lm = TransformersModel("tiny/neox", task="text-generation", tokenizer=tiny_tokenizer(VOCAB))
    assert not lm.dispatched and next(lm._module.parameters()).is_meta
    with collect_layer_stats(lm) as col:
        assert lm.dispatched and lm._module is real
        with torch.no_grad(), lm.trace(ids()):
            saved = nnsight.save([layer.output for layer in lm.gpt_neox.layers])
    for got, h in zip(col.passes[0], saved, strict=True):
        assert_stats_equal(got, layer_stats(h, 3))
    with pytest.raises(TypeError, match="nnsight wrapper"):
        decoder_layers(object())
