"""A Hugging Face config (any decoder family transformers knows) or explicit dims -> architecture.

The architecture is a dict: L, d, H, d_ff (always), rotary_pct, rotary_base (where known), and
where the config gives them H_kv (key/value heads, GQA), head_dim, n_experts and
experts_per_token (mixture of experts). `Predictor.predict` and `architecture_features` take it;
the predictor's features use L, d, H, d_ff and the rotary settings only: the other columns are
for reporting and for checking how far a prediction extrapolates (`Predictor.predict`'s
`extrapolated_features`). This module only reads configs; it knows nothing of the models.

How a config is read:
- a dict or config.json with a `model_type` that transformers knows goes through transformers'
  own config class (`AutoConfig`'s mapping), so its `attribute_map` resolves each family's names
  (GPT-2's n_embd/n_layer/n_head, MPT's d_model/n_layers/n_heads, Bloom's n_layer, ...), its
  defaults fill what the file leaves out (as `AutoConfig.from_pretrained` does) and a
  multimodal wrapper is read through its language model (`get_text_config(decoder=True)`);
- a `transformers.PretrainedConfig` is read the same way;
- a dict without a known `model_type` is read by the standard names and their common aliases
  (`_ALIASES`): Llama-style (rotary on the full head unless it says otherwise), or GPT-2-style
  when it has n_layer / n_embd (learned positions, MLP 4d unless n_inner);
- explicit dims: L, d, H, d_ff (default 4d), rotary_pct, rotary_base, H_kv, head_dim, n_experts,
  experts_per_token.

MLP width d_ff: intermediate_size, else ffn_dim (OPT), ffn_hidden_size (Falcon, DBRX),
d_ff, n_inner (GPT-2, GPT-J); None there means 4d, as those families define it (Bloom has no
such key: 4d); MPT: expansion_ratio x d. Rotary: rotary_pct or partial_rotary_factor (either
place: top level or transformers v5's rope_parameters), GPT-J's rotary_dim / head_dim;
rotary_emb_base or rope_theta. A known family with no rotary settings (GPT-2, OPT, Bloom,
GPT-Neo, BERT, ...) and ALiBi (Falcon alibi, MPT attn_config.alibi) have rotary_pct 0.

Refused, with a one-line ValueError naming the key: counts that are not positive integers
(`num_hidden_layers: 4.7`), a hidden size that the heads do not divide (unless head_dim says how
wide the heads are), key/value heads that do not divide the heads, more experts per token than
experts, rotary fractions outside [0, 1], and encoder-decoder models (T5, BART, ...): massact
predicts decoder-only stacks, so for one stack of such a model give its dimensions explicitly
(the message prints them).

The transformers config object is read in `_config_hf`; the names and checks both readers share
live in `_config_checks`. Imports, one way: `_config` -> `_config_hf` -> `_config_checks`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._config_checks import (
    _ALIASES,
    _EXPERTS,
    _HEAD_DIM,
    _KV,
    _MLP,
    _TOP_K,
    _check_heads,
    _extras,
    _float,
    _int,
    _refuse_encoder_decoder,
    _rotary,
    _validated,
)
from ._config_hf import _from_hf

_COUNTS = {k for names in _ALIASES.values() for k in names} | {
    *_MLP, *_KV, *_HEAD_DIM, "num_decoder_layers",
}  # fmt: skip
_ALIASES_STD = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
EXPLICIT = ("L", "d", "H", "d_ff")
EXTRA = ("H_kv", "head_dim", "n_experts", "experts_per_token")
_ROTARY = ("rotary_pct", "rotary_base")


def arch_from_config(config: Any) -> dict:
    """{L, d, H, d_ff, rotary_pct, rotary_base, ...} (see the module docstring) from a dict,
    a config.json path, a folder holding config.json, or a transformers PretrainedConfig."""
    if isinstance(config, (str, Path)):
        config = _read_json(Path(config))
    if isinstance(config, dict):
        c = dict(config)
        if any(k in c for k in ("L", "d", "H")):  # (not d_ff: T5 has a d_ff key)
            return _explicit(c)
        cls = _config_class(c.get("model_type"))
        if cls is None:
            return _from_dict(c)
        return _from_hf(_build(cls, c))
    if _is_hf_config(config):
        return _from_hf(config)
    raise TypeError(
        "config must be a dict, a path, a folder or a transformers PretrainedConfig, got "
        f"{type(config).__name__}"
    )


# --------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
    """A config.json file, or the config.json inside a folder; ValueError (naming the file)
    for anything but a JSON object."""
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found (give a config.json or its folder)")
    try:
        config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds a JSON {_json_kind(config)}, not an object of config keys "
            "(a Hugging Face config.json)"
        )
    return config


def _json_kind(value: object) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _is_hf_config(obj: object) -> bool:
    if not type(obj).__module__.startswith("transformers"):
        return False
    from transformers import PretrainedConfig

    return isinstance(obj, PretrainedConfig)


def _config_class(model_type: object):
    """transformers' config class for `model_type`, or None (unknown, or no transformers)."""
    if not isinstance(model_type, str) or not model_type:
        return None
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None


def _build(cls, c: dict):
    """cls built from the dict the way AutoConfig builds it; the counts are checked first, so
    that a bad value is named as massact names it (and not by transformers' own validators)."""
    c = _checked_counts(c, getattr(cls, "attribute_map", {}) or {})
    try:
        return cls.from_dict(c)
    except Exception as err:  # transformers' validators: several lines; keep one
        text = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"config is not a valid {cls.__name__}: {text[:300]}") from None


def _checked_counts(c: dict, attribute_map: dict) -> dict:
    """A copy of c with every count it holds checked (positive integers; experts may be 0) and
    made an int (4.0 -> 4), its text_config too; heads checked against the hidden size."""
    c = dict(c)
    for key in ("rope_parameters", "rope_scaling"):
        if c.get(key) is not None and not isinstance(c[key], dict):
            raise ValueError(f"config {key} must be an object, got a JSON {_json_kind(c[key])}")
    keys = _COUNTS | {attribute_map.get(k, k) for k in _ALIASES_STD}
    for key in sorted(keys):
        if c.get(key) is not None:
            c[key] = _int(c, key)
    for key in (*_EXPERTS, *_TOP_K):
        if c.get(key) is not None:
            c[key] = _int(c, key, zero=True)

    def raw(name: str) -> tuple[str, Any]:
        key = attribute_map.get(name, name)
        return key, c.get(key)

    (dk, d), (hk, H) = raw("hidden_size"), raw("num_attention_heads")
    hd = next((c[k] for k in _HEAD_DIM if c.get(k) is not None), None)
    if d is not None and H is not None and hd is None:
        _check_heads(d, H, dk, hk)
    if isinstance(c.get("text_config"), dict):
        c["text_config"] = _checked_counts(c["text_config"], {})
    return c


# --------------------------------------------------------------------------- the dims
def _explicit(c: dict) -> dict:
    """Explicit L, d, H (required), d_ff (default 4 d), rotary_pct, rotary_base, H_kv,
    head_dim, n_experts, experts_per_token if given."""
    missing = [k for k in ("L", "d", "H") if c.get(k) is None]
    if missing:
        raise ValueError(f"explicit dimensions lack {missing}: give L, d, H (and d_ff)")
    arch = {k: _int(c, k) for k in ("L", "d", "H")}
    arch["d_ff"] = _int(c, "d_ff") if c.get("d_ff") is not None else 4 * arch["d"]
    for k in _ROTARY:
        if c.get(k) is not None:
            arch[k] = _float(k, c[k])
    for k in EXTRA:
        if c.get(k) is not None:
            arch[k] = _int(c, k)
    return _validated(arch, {k: k for k in (*EXPLICIT, *EXTRA, *_ROTARY)})


def _from_dict(c: dict) -> dict:
    """A dict without a model_type transformers knows: the standard names and their aliases."""
    if c.get("is_encoder_decoder") is True:
        _refuse_encoder_decoder(c.get, c.get("model_type"))
    if isinstance(c.get("text_config"), dict) and not any(
        c.get(k) is not None for k in _ALIASES["L"]
    ):
        return _from_dict(c["text_config"])  # a multimodal wrapper: its language model
    gpt2 = "n_layer" in c or "n_embd" in c  # GPT-2-style: learned positions, no rotary
    names = {k: next((a for a in v if c.get(a) is not None), v[0]) for k, v in _ALIASES.items()}
    if gpt2:
        names = {"L": "n_layer", "d": "n_embd", "H": "n_head"}
    missing = [v for v in names.values() if c.get(v) is None]
    if missing:
        raise ValueError(
            f"config lacks {missing}: expected GPTNeoX/Llama keys (num_hidden_layers, hidden_size, "
            "num_attention_heads, intermediate_size), GPT-2 keys (n_layer, n_embd, n_head, "
            "n_inner), MPT/OPT-style aliases (n_layers, d_model, n_heads, ffn_dim), a model_type "
            "transformers knows, or explicit L, d, H, d_ff"
        )
    arch = {k: _int(c, v) for k, v in names.items()}
    if gpt2:
        arch["d_ff"] = _int(c, "n_inner") if c.get("n_inner") else 4 * arch["d"]  # None = 4d
    else:
        key = next((k for k in _MLP if c.get(k) is not None), None)
        if key is None:
            raise ValueError("config lacks intermediate_size (the MLP width d_ff)")
        arch["d_ff"] = _int(c, key)
        names["d_ff"] = key
    arch.update(_extras(c.get, arch, names))
    if gpt2:
        arch["rotary_pct"] = 0.0
    else:
        arch.update(_dict_rotary(c))
    return _validated(arch, names)


def _dict_rotary(c: dict) -> dict:
    """Rotary settings of a plain dict (newer configs keep them in rope_parameters)."""
    rope_key = "rope_parameters" if c.get("rope_parameters") else "rope_scaling"
    rope = c.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise ValueError(f"config {rope_key} must be an object, got a JSON {_json_kind(rope)}")
    pct = c.get("rotary_pct", rope.get("partial_rotary_factor", c.get("partial_rotary_factor")))
    base = c.get("rotary_emb_base", c.get("rope_theta", rope.get("rope_theta")))
    if pct is None and c.get("model_type") != "gpt_neox":
        pct = 1.0  # Llama-style: rotary on the full head dimension
    return _rotary(pct, base)
