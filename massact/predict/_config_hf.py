"""Reading a transformers `PretrainedConfig` into the architecture dict (see `_config`).

The config object's attribute map resolves each family's names; a multimodal wrapper is read
through its language model; the MLP width, nested MPT/DBRX settings, multi-query attention and
the rotary settings (v4 attributes or v5 rope_parameters, ALiBi) are read the way each family
defines them. `_config.arch_from_config` builds the object first from a dict or config.json
whose model_type transformers knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._config_checks import (
    _ALIASES,
    _MLP,
    _extras,
    _float,
    _int,
    _refuse_encoder_decoder,
    _rotary,
    _validated,
)

_FOUR_D = ("bloom",)  # families whose MLP is 4d without a key saying so


def _from_hf(cfg) -> dict:
    """The dims of a transformers config, read through its attribute map."""
    model_type = getattr(cfg, "model_type", None) or type(cfg).__name__
    if getattr(cfg, "is_encoder_decoder", False):
        _refuse_encoder_decoder(lambda k: getattr(cfg, k, None), model_type)
    get_text = getattr(cfg, "get_text_config", None)
    text = get_text(decoder=True) if callable(get_text) else getattr(cfg, "text_config", None)
    if text is not None and text is not cfg:
        return _from_hf(text)  # a multimodal wrapper: its language model

    def get(key: str) -> Any:
        try:
            return getattr(cfg, key, None)
        except Exception:  # a property that cannot be computed for this config
            return None

    names = {}
    for col, keys in _ALIASES.items():
        key = next((k for k in keys if get(k) is not None), None)
        if key is None:
            raise ValueError(
                f"config ({model_type}) has no {keys[0]} (nor {', '.join(keys[1:])}): not a "
                "transformer decoder massact can read; give L, d, H, d_ff explicitly"
            )
        names[col] = key
    arch = {col: _int(get, key) for col, key in names.items()}
    arch["d_ff"], names["d_ff"] = _hf_mlp(cfg, get, arch["d"], model_type)
    arch.update(_extras(get, arch, names))
    if get("multi_query") is True and not get("new_decoder_architecture"):
        arch["H_kv"], names["H_kv"] = 1, "multi_query"  # Falcon-7B, StarCoder: one kv head
    for col, sub, key in (("H_kv", "attn_config", "kv_n_heads"),
                          ("n_experts", "ffn_config", "moe_num_experts"),
                          ("experts_per_token", "ffn_config", "moe_top_k")):  # fmt: skip
        v = _sub(cfg, sub, key)
        if col not in arch and v:
            names[col] = f"{sub}.{key}"
            arch[col] = _int(lambda _k, v=v: v, names[col])
    arch.update(_hf_rotary(cfg, get, arch))
    return _validated(arch, names)


def _sub(cfg, sub: str, key: str) -> Any:
    """cfg.<sub>.<key> where <sub> is a nested config object or dict (MPT, DBRX)."""
    part = getattr(cfg, sub, None)
    if isinstance(part, dict):
        return part.get(key)
    return getattr(part, key, None) if part is not None else None


def _hf_mlp(cfg, get: Callable[[str], Any], d: int, model_type: str) -> tuple[int, str]:
    for key in _MLP:
        if get(key) is not None:
            return _int(get, key), key
    if any(hasattr(cfg, k) for k in _MLP) or model_type in _FOUR_D:
        return 4 * d, "4d"  # GPT-2, GPT-J, GPT-Neo, Falcon: None means 4d; Bloom: always
    ratio = get("expansion_ratio")  # MPT
    if ratio is not None:
        v = _float("expansion_ratio", ratio) * d
        if v != int(v) or v < 1:
            raise ValueError(f"config expansion_ratio {ratio!r} x d={d} is not a width")
        return int(v), "expansion_ratio"
    width = _sub(cfg, "ffn_config", "ffn_hidden_size")  # DBRX
    if width is not None:
        key = "ffn_config.ffn_hidden_size"
        return _int(lambda _k: width, key), key
    raise ValueError(
        f"config ({model_type}) has no MLP width (intermediate_size, ffn_dim, ffn_hidden_size, "
        "d_ff, n_inner or expansion_ratio): give d_ff explicitly"
    )


def _hf_rotary(cfg, get: Callable[[str], Any], arch: dict) -> dict:
    """rotary_pct and rotary_base of a transformers config (v4 attributes or v5
    rope_parameters, per layer type for Gemma-3-style configs: the full-attention entry)."""
    if get("alibi") or _sub(cfg, "attn_config", "alibi"):
        return {"rotary_pct": 0.0}  # ALiBi: no rotary embedding
    rope = get("rope_parameters")
    if rope is None:
        rope = get("rope_scaling")
    rope = rope if isinstance(rope, dict) else {}
    if rope and all(isinstance(v, dict) for v in rope.values()):
        rope = rope.get("full_attention") or next(iter(rope.values()))
    pct = rope.get("partial_rotary_factor", get("partial_rotary_factor"))
    if pct is None:
        pct = get("rotary_pct")
    base = rope.get("rope_theta", get("rope_theta"))
    if base is None:
        base = get("rotary_emb_base")
    if pct is None and get("rotary_dim") is not None:  # GPT-J, CodeGen
        head = arch.get("head_dim", arch["d"] // arch["H"])
        pct = _int(get, "rotary_dim") / head
    if pct is None:
        rotary = bool(rope) or base is not None
        pct = 1.0 if rotary else 0.0  # no rotary settings: learned or relative positions
    return _rotary(pct, base)
