"""Architecture configs read through transformers' config classes (issue 13).

Every config is built in the test with transformers' own classes (no download): each family's
names (attribute_map) resolve to the same L, d, H, d_ff; GQA, head_dim and experts are kept as
extra columns; rotary settings come from transformers v4 attributes or v5 rope_parameters; a
config object, its dict and its saved config.json give the same architecture; invalid configs
are refused with a one-line message naming the key.
"""

from __future__ import annotations

import json

import pytest
import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from massact import cli
from massact.predict import arch_from_config

SMALL = {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4}
DIMS = {"L": 3, "d": 64, "H": 4}


def _cfg(model_type: str, **kw):
    return CONFIG_MAPPING[model_type](**kw)


# (config, the architecture it must give)
FAMILIES = {
    "gpt2": (lambda: tf.GPT2Config(n_layer=3, n_embd=64, n_head=4),
             {**DIMS, "d_ff": 256, "rotary_pct": 0.0}),
    "gpt_neox": (lambda: tf.GPTNeoXConfig(**SMALL, intermediate_size=128),
                 {**DIMS, "d_ff": 128, "rotary_pct": 0.25, "rotary_base": 10000.0}),
    "llama_gqa": (lambda: tf.LlamaConfig(**SMALL, intermediate_size=96, num_key_value_heads=2),
                  {**DIMS, "d_ff": 96, "H_kv": 2, "head_dim": 16, "rotary_pct": 1.0,
                   "rotary_base": 10000.0}),
    "mistral": (lambda: _cfg("mistral", **SMALL, intermediate_size=96, num_key_value_heads=1,
                             rope_theta=1e6),
                {**DIMS, "d_ff": 96, "H_kv": 1, "head_dim": 16, "rotary_pct": 1.0,
                 "rotary_base": 1e6}),
    "mpt": (lambda: _cfg("mpt", n_layers=3, d_model=64, n_heads=4, expansion_ratio=2),
            {**DIMS, "d_ff": 128, "rotary_pct": 0.0}),  # ALiBi
    "falcon_7b": (lambda: _cfg("falcon", **SMALL),  # multi_query: one key/value head
                  {**DIMS, "d_ff": 256, "H_kv": 1, "head_dim": 16, "rotary_pct": 1.0,
                   "rotary_base": 10000.0}),
    "falcon_40b": (lambda: _cfg("falcon", **SMALL, new_decoder_architecture=True,
                                num_kv_heads=2, ffn_hidden_size=192),
                   {**DIMS, "d_ff": 192, "H_kv": 2, "head_dim": 16, "rotary_pct": 1.0,
                    "rotary_base": 10000.0}),
    "falcon_alibi": (lambda: _cfg("falcon", **SMALL, alibi=True),
                     {**DIMS, "d_ff": 256, "H_kv": 1, "head_dim": 16, "rotary_pct": 0.0}),
    "bloom": (lambda: _cfg("bloom", n_layer=3, hidden_size=64, n_head=4),
              {**DIMS, "d_ff": 256, "rotary_pct": 0.0}),
    "opt": (lambda: _cfg("opt", **SMALL, ffn_dim=200), {**DIMS, "d_ff": 200, "rotary_pct": 0.0}),
    "gptj": (lambda: _cfg("gptj", n_layer=3, n_embd=64, n_head=4, rotary_dim=4),
             {**DIMS, "d_ff": 256, "rotary_pct": 0.25}),
    "gpt_neo": (lambda: _cfg("gpt_neo", num_layers=3, hidden_size=64, num_heads=4,
                             attention_types=[[["global"], 3]]),
                {**DIMS, "d_ff": 256, "rotary_pct": 0.0}),
    "gpt_bigcode": (lambda: _cfg("gpt_bigcode", n_layer=3, n_embd=64, n_head=4),
                    {**DIMS, "d_ff": 256, "H_kv": 1, "rotary_pct": 0.0}),
    "phi": (lambda: _cfg("phi", **SMALL, intermediate_size=128),
            {**DIMS, "d_ff": 128, "H_kv": 4, "rotary_pct": 0.5, "rotary_base": 10000.0}),
    "mixtral": (lambda: _cfg("mixtral", **SMALL, intermediate_size=96, num_key_value_heads=2,
                             num_local_experts=8, num_experts_per_tok=2),
                {**DIMS, "d_ff": 96, "H_kv": 2, "n_experts": 8, "experts_per_token": 2,
                 "rotary_pct": 1.0, "rotary_base": 1e6}),
    "qwen2_moe": (lambda: _cfg("qwen2_moe", **SMALL, intermediate_size=96,
                               num_key_value_heads=4, num_experts=6, num_experts_per_tok=2),
                  {**DIMS, "d_ff": 96, "H_kv": 4, "n_experts": 6, "experts_per_token": 2,
                   "rotary_pct": 1.0, "rotary_base": 10000.0}),
    "gemma3_multimodal": (  # the language model of the wrapper; full-attention rope_theta
        lambda: _cfg("gemma3", text_config={**SMALL, "intermediate_size": 96,
                                            "num_key_value_heads": 2, "head_dim": 32}),
        {**DIMS, "d_ff": 96, "H_kv": 2, "head_dim": 32, "rotary_pct": 1.0,
         "rotary_base": 1e6}),
    "dbrx": (lambda: _cfg("dbrx", n_layers=3, d_model=64, n_heads=4,
                          ffn_config={"ffn_hidden_size": 96, "moe_num_experts": 4,
                                      "moe_top_k": 2},
                          attn_config={"kv_n_heads": 2}),
             {**DIMS, "d_ff": 96, "H_kv": 2, "n_experts": 4, "experts_per_token": 2,
              "rotary_pct": 1.0, "rotary_base": 10000.0}),
}  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gives_its_architecture(family, tmp_path):
    build, want = FAMILIES[family]
    cfg = build()
    assert arch_from_config(cfg) == want  # the PretrainedConfig
    assert arch_from_config(cfg.to_dict()) == want  # its dict (built again through AutoConfig)
    cfg.save_pretrained(tmp_path)
    assert arch_from_config(tmp_path) == want  # its config.json
    assert arch_from_config(tmp_path / "config.json") == want


def test_rotary_settings_from_v4_attributes_and_v5_rope_parameters():
    v4 = {"model_type": "gpt_neox", **SMALL, "intermediate_size": 128, "rotary_pct": 0.5,
          "rotary_emb_base": 500}  # fmt: skip
    v5 = {"model_type": "gpt_neox", **SMALL, "intermediate_size": 128,
          "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5,
                              "rope_theta": 500.0}}  # fmt: skip
    want = {**DIMS, "d_ff": 128, "rotary_pct": 0.5, "rotary_base": 500.0}
    assert arch_from_config(v4) == arch_from_config(v5) == want
    plain = {**SMALL, "intermediate_size": 128}  # no model_type: read by the standard names
    assert arch_from_config({**plain, "rope_parameters": v5["rope_parameters"]}) == want
    assert arch_from_config({**plain, "partial_rotary_factor": 0.5, "rope_theta": 500}) == want
    assert arch_from_config(plain)["rotary_pct"] == 1.0  # Llama-style default


def test_aliases_without_a_model_type():
    mpt_like = {"n_layers": 3, "d_model": 64, "n_heads": 4, "ffn_dim": 200,
                "num_key_value_heads": 2, "num_local_experts": 4,
                "num_experts_per_tok": 1}  # fmt: skip
    arch = arch_from_config(mpt_like)
    assert {k: arch[k] for k in ("L", "d", "H", "d_ff", "H_kv", "n_experts")} == {
        **DIMS, "d_ff": 200, "H_kv": 2, "n_experts": 4}  # fmt: skip
    assert arch["experts_per_token"] == 1
    wrapped = {"text_config": {**SMALL, "intermediate_size": 96}}  # a multimodal wrapper
    assert arch_from_config(wrapped)["d_ff"] == 96
    explicit = arch_from_config({"L": 3, "d": 64, "H": 4, "H_kv": 2, "n_experts": 8})
    assert explicit == {**DIMS, "d_ff": 256, "H_kv": 2, "n_experts": 8}


def test_an_encoder_decoder_is_refused_with_its_decoder_dims(tmp_path):
    t5 = _cfg("t5", d_model=64, num_layers=2, num_decoder_layers=3, num_heads=4, d_ff=96)
    for cfg in (t5, t5.to_dict()):
        with pytest.raises(ValueError, match="encoder-decoder model \\(t5\\)") as err:
            arch_from_config(cfg)
        assert "--L 3 --d 64 --H 4 --d-ff 96" in str(err.value)
    with pytest.raises(ValueError, match="encoder-decoder model \\(bart\\)"):
        arch_from_config(_cfg("bart", d_model=64, encoder_layers=2, decoder_layers=2))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**SMALL, "num_hidden_layers": 4.7, "intermediate_size": 96},
         "num_hidden_layers must be a positive integer, got 4.7"),
        ({"model_type": "llama", **SMALL, "num_hidden_layers": 4.7, "intermediate_size": 96},
         "num_hidden_layers must be a positive integer, got 4.7"),
        ({"model_type": "gpt2", "n_layer": 3, "n_embd": 64, "n_head": 0},
         "n_head must be a positive integer, got 0"),
        ({**SMALL, "hidden_size": 66, "intermediate_size": 96},
         "hidden_size=66 is not a multiple of num_attention_heads=4"),
        ({"model_type": "llama", **SMALL, "hidden_size": 66, "intermediate_size": 96},
         "hidden_size=66 is not a multiple of num_attention_heads=4"),
        ({"model_type": "gpt2", "n_layer": 3, "n_embd": 66, "n_head": 4},
         "n_embd=66 is not a multiple of n_head=4"),
        ({"L": 3, "d": 66, "H": 4}, "d=66 is not a multiple of H=4"),
        ({"L": 3, "d": 64, "H": -4}, "config H must be a positive integer, got -4"),
        ({"model_type": "llama", **SMALL, "intermediate_size": 96, "num_key_value_heads": 3},
         "num_key_value_heads=3 does not divide num_attention_heads=4"),
        ({"model_type": "mixtral", **SMALL, "intermediate_size": 96, "num_key_value_heads": 2,
          "num_local_experts": 2, "num_experts_per_tok": 3},
         "num_experts_per_tok=3 is more than num_local_experts=2 experts"),
        ({**SMALL, "intermediate_size": 96, "partial_rotary_factor": 1.5},
         "must lie in [0, 1]"),
        ({"model_type": "llama", **SMALL, "intermediate_size": 96, "rope_parameters": [1, 2]},
         "rope_parameters must be an object, got a JSON list"),
        ({"model_type": "llama", **SMALL, "intermediate_size": 96, "hidden_act": 3},
         "config is not a valid LlamaConfig"),
    ],
)  # fmt: skip
def test_invalid_configs_are_refused_in_one_line(tmp_path, capsys, config, message):
    with pytest.raises(ValueError) as err:
        arch_from_config(config)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code = cli.main(["predict", "--config", str(path), "--predictor", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("massact: error: "), err
    assert message in err


def test_head_dim_allows_heads_that_do_not_divide_d():
    cfg = {**SMALL, "hidden_size": 66, "intermediate_size": 96, "head_dim": 16}
    assert arch_from_config(cfg)["head_dim"] == 16
    assert arch_from_config({"L": 3, "d": 66, "H": 4, "head_dim": 16})["d"] == 66


def test_cli_refuses_heads_that_do_not_divide_d(tmp_path, capsys):
    argv = ["predict", "--L", "3", "--d", "66", "--H", "4", "--predictor", str(tmp_path)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d=66 is not a multiple of H=4" in err


def test_type_errors_name_what_is_accepted():
    with pytest.raises(TypeError, match="PretrainedConfig, got list"):
        arch_from_config([1, 2])
