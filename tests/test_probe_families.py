"""Layer discovery beyond GPTNeoX / GPT-2 / Llama: OPT, MPT, encoders (BERT, RoBERTa, ELECTRA,
DistilBERT), T5's encoder, encoder-decoder models (T5, BART: both stacks, labelled) and
multimodal wrappers (Gemma3, Qwen2-VL: their language model), each a tiny random model built
from its config. Each case names the ModuleList the layers must come from; the statistics are
compared with torch.equal (every field) to `layer_stats` of the outputs that plain forward hooks
on those modules catch in the same pass.
"""

import pytest
import torch
import transformers as tr
from _cases import assert_stats_equal
from _models import layer_outputs, token_ids

from massact import collect_layer_stats, layer_stats
from massact.probe import decoder_layers, layer_names, layer_stacks

VOCAB, D, SEQ, BATCH = 64, 32, 7, 2
HEADS = dict(num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def seeded(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


def opt():
    config = tr.OPTConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3, ffn_dim=64, word_embed_proj_dim=D,
        num_attention_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    return seeded(tr.OPTForCausalLM, config)


def mpt():
    config = tr.MptConfig(vocab_size=VOCAB, d_model=D, n_layers=3, n_heads=4, max_seq_len=64)
    return seeded(tr.MptForCausalLM, config)


def bert(cls=tr.BertModel):
    return seeded(cls, tr.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3, **HEADS))


def roberta():
    config = tr.RobertaConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3, pad_token_id=1,
        **{**HEADS, "max_position_embeddings": 70},
    )  # fmt: skip
    return seeded(tr.RobertaForMaskedLM, config)


def electra():
    config = tr.ElectraConfig(
        vocab_size=VOCAB, embedding_size=16, hidden_size=D, num_hidden_layers=3, **HEADS
    )
    return seeded(tr.ElectraForMaskedLM, config)


def distilbert():
    config = tr.DistilBertConfig(
        vocab_size=VOCAB, dim=D, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    return seeded(tr.DistilBertForMaskedLM, config)


def t5_config(**extra):
    return tr.T5Config(
        vocab_size=VOCAB, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **extra,
    )  # fmt: skip


def t5_encoder():
    return seeded(tr.T5EncoderModel, t5_config())


def t5():
    return seeded(tr.T5ForConditionalGeneration, t5_config(num_decoder_layers=3))


def bart():
    config = tr.BartConfig(
        vocab_size=VOCAB, d_model=D, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
    )  # fmt: skip
    return seeded(tr.BartForConditionalGeneration, config)


TEXT = dict(
    vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    bos_token_id=0, eos_token_id=1, pad_token_id=None,
)  # fmt: skip


def gemma3_multimodal():
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14,
    )  # fmt: skip
    config = tr.Gemma3Config(
        text_config=dict(TEXT, head_dim=16, sliding_window=16), vision_config=vision,
        mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 3,
        eoi_token_index=VOCAB - 2,
    )  # fmt: skip
    return seeded(tr.Gemma3ForConditionalGeneration, config)


def qwen2_vl():
    vision = dict(
        depth=1, embed_dim=16, hidden_size=D, num_heads=2, mlp_ratio=2, patch_size=14,
        spatial_merge_size=2,
    )  # fmt: skip
    rope = {"type": "mrope", "mrope_section": [2, 3, 3]}
    config = tr.Qwen2VLConfig(
        text_config=dict(TEXT, rope_scaling=rope), vision_config=vision,
        image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
    )  # fmt: skip
    return seeded(tr.Qwen2VLForConditionalGeneration, config)


# id -> (builder, path of the ModuleList that must be found)
SINGLE_STACK = {
    "opt": (opt, "model.decoder.layers"),
    "mpt": (mpt, "transformer.blocks"),
    "bert-base": (bert, "encoder.layer"),
    "bert-mlm": (lambda: bert(tr.BertForMaskedLM), "bert.encoder.layer"),
    "roberta-mlm": (roberta, "roberta.encoder.layer"),
    "electra-mlm": (electra, "electra.encoder.layer"),  # found through model.base_model
    "distilbert-mlm": (distilbert, "distilbert.transformer.layer"),  # likewise
    "t5-encoder": (t5_encoder, "encoder.block"),
    "gemma3-multimodal": (gemma3_multimodal, "model.language_model.layers"),
    "qwen2-vl": (qwen2_vl, "model.language_model.layers"),
}


def ids(seed: int = 1, seq: int = SEQ) -> torch.Tensor:
    return token_ids(VOCAB - 4, BATCH, seq, seed) + 2  # no special / image tokens


@pytest.mark.parametrize("build,path", SINGLE_STACK.values(), ids=SINGLE_STACK.keys())
def test_single_stack_families(build, path):
    model = build()
    expected = list(model.get_submodule(path))
    found = decoder_layers(model)
    assert len(found) == len(expected) and all(a is b for a, b in zip(found, expected))
    assert layer_stacks(model)[0][0] is None and layer_names(model) == ["0", "1", "2"][: len(found)]
    x = ids()
    with torch.no_grad(), collect_layer_stats(model, k=2) as col:
        caught = layer_outputs(model, x, layers=expected)  # same pass, plain hooks
    assert [len(p) for p in col.passes] == [len(expected)]
    for got, h in zip(col.passes[0], caught, strict=True):
        assert h.shape == (BATCH, SEQ, h.shape[-1])
        assert_stats_equal(got, layer_stats(h, 2))
    table = col.table()
    assert list(table.columns[:3]) == ["pass", "layer", "sample"] and "stack" not in table


STACKED = {
    "t5": (t5, "encoder.block", "decoder.block"),
    "bart": (bart, "model.encoder.layers", "model.decoder.layers"),
}


@pytest.mark.parametrize("build,enc_path,dec_path", STACKED.values(), ids=STACKED.keys())
def test_encoder_decoder_stacks_are_labelled(build, enc_path, dec_path):
    model = build()
    encoder, decoder = list(model.get_submodule(enc_path)), list(model.get_submodule(dec_path))
    stacks = layer_stacks(model)
    assert [s for s, _ in stacks] == ["encoder", "decoder"]
    assert all(a is b for a, b in zip(stacks[0][1] + stacks[1][1], encoder + decoder, strict=True))
    assert all(a is b for a, b in zip(decoder_layers(model), encoder + decoder, strict=True))
    assert layer_names(model) == ["encoder.0", "encoder.1", "decoder.0", "decoder.1", "decoder.2"]
    x = ids()
    with torch.no_grad(), collect_layer_stats(model) as col:
        caught = layer_outputs(
            model, input_ids=x, decoder_input_ids=ids(2, 5), layers=encoder + decoder
        )
    assert col.layer_names == layer_names(model)
    assert col.stacks == ["encoder"] * 2 + ["decoder"] * 3 and col.layer_ids == [0, 1, 0, 1, 2]
    for got, h in zip(col.passes[0], caught, strict=True):
        assert_stats_equal(got, layer_stats(h, 3))
    table = col.table()
    assert list(table.columns[:4]) == ["pass", "stack", "layer", "sample"]
    labels = table.drop_duplicates(["stack", "layer"])[["stack", "layer"]].values.tolist()
    assert labels == [
        ["encoder", 0],
        ["encoder", 1],
        ["decoder", 0],
        ["decoder", 1],
        ["decoder", 2],
    ]
    row = table[(table["stack"] == "decoder") & (table["layer"] == 2) & (table["sample"] == 1)]
    assert row["median"].item() == layer_stats(caught[-1], 3).median[1].item()

    # a pass that starts mid-model (decoder only, as in generate's decoding steps) keeps its
    # labels; layers by name and by index pick from both stacks, in execution order
    with torch.no_grad():
        memory = model.get_encoder()(input_ids=x).last_hidden_state
    with torch.no_grad(), collect_layer_stats(model, layers=["decoder.1", 0]) as col:
        model.get_decoder()(input_ids=ids(3, 4), encoder_hidden_states=memory)
        model(input_ids=x, decoder_input_ids=ids(2, 5))
    assert col.layer_names == ["encoder.0", "decoder.1"]
    table = col.table()
    assert table[table["pass"] == 0][["stack", "layer"]].drop_duplicates().values.tolist() == [
        ["decoder", 1]
    ]
    assert table[table["pass"] == 1]["stack"].drop_duplicates().tolist() == ["encoder", "decoder"]
    with pytest.raises(ValueError, match="no layer named 'decoder.7'"):
        with collect_layer_stats(model, layers=["decoder.7"]):
            pass


def test_error_names_the_model_module_lists():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList(
                torch.nn.ModuleList([torch.nn.Linear(4, 4)]) for _ in range(3)
            )
            self.head = torch.nn.Module()
            self.head.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)] * 2)

    with pytest.raises(TypeError, match="cannot find the decoder layers of Odd") as err:
        decoder_layers(Odd())
    message = str(err.value)
    assert "Its ModuleLists: stages (3), head.blocks (2)." in message
    assert "stages.0" not in message  # only the outermost lists
    assert "layers=list(model.get_submodule('stages'))" in message
    with pytest.raises(TypeError, match="It has no ModuleList"):
        decoder_layers(torch.nn.Linear(2, 2))
