"""The names and checks every architecture reader shares (`_config` and `_config_hf`).

The keys one quantity goes by across families (`_ALIASES`, MLP width, key/value heads, head
width, experts), the value checks (positive integers, finite numbers, heads dividing the hidden
size, rotary fractions in [0, 1]), the optional columns (H_kv, head_dim, n_experts,
experts_per_token), the shape checks across the dims, and the one-line refusal of
encoder-decoder models. Imports nothing of massact: both readers build on it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

# names of one quantity across families (transformers' attribute maps, for configs without a
# model_type that transformers knows); the first present (not None) is read
_ALIASES = {
    "L": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "d": ("hidden_size", "n_embd", "d_model"),
    "H": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
}
_MLP = ("intermediate_size", "ffn_dim", "ffn_hidden_size", "d_ff", "n_inner")
_KV = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
_HEAD_DIM = ("head_dim", "d_kv")
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_top_k")
# arch column, the keys it is read from, whether 0 is allowed (0 experts: a dense model)
_EXTRA_KEYS = (
    ("H_kv", _KV, False), ("head_dim", _HEAD_DIM, False),
    ("n_experts", _EXPERTS, True), ("experts_per_token", _TOP_K, True),
)  # fmt: skip


def _int(c: Any, key: str, *, zero: bool = False) -> int:
    """c[key] as a positive integer (or 0 with zero=True); ValueError naming the key."""
    v = c[key] if isinstance(c, dict) else c(key)
    bad = isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
    if bad or v != int(v) or v < (0 if zero else 1):
        kind = "a non-negative" if zero else "a positive"
        raise ValueError(f"config {key} must be {kind} integer, got {v!r}")
    return int(v)


def _float(key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"config {key} must be a number, got {v!r}")
    return float(v)


def _check_heads(d: int, H: int, dk: str = "d", hk: str = "H") -> None:
    if d % H:
        raise ValueError(
            f"config {dk}={d} is not a multiple of {hk}={H} (head width {d / H:g}): the "
            "attention heads must divide the hidden size, or the config must give head_dim"
        )


def _rotary(pct: object, base: object) -> dict:
    out = {}
    if pct is not None:
        out["rotary_pct"] = _float("rotary_pct (partial_rotary_factor)", pct)
        if not 0 <= out["rotary_pct"] <= 1:
            raise ValueError(
                f"config rotary_pct (partial_rotary_factor) must lie in [0, 1], got {pct!r}"
            )
    if base is not None:
        out["rotary_base"] = _float("rotary_emb_base (rope_theta)", base)
        if out["rotary_base"] <= 0:
            raise ValueError(f"config rotary_emb_base (rope_theta) must be > 0, got {base!r}")
    return out


def _extras(get: Callable[[str], Any], arch: dict, names: dict) -> dict:
    """H_kv, head_dim, n_experts, experts_per_token where the config gives them (`names` gets
    the key each was read from, for the messages)."""
    out = {}
    for col, keys, zero in _EXTRA_KEYS:
        key = next((k for k in keys if get(k) is not None), None)
        if key is not None:
            v = _int(get, key, zero=zero)
            if v:  # 0 experts: a dense model
                out[col], names[col] = v, key
    if "experts_per_token" in out and "n_experts" not in out:
        del out["experts_per_token"]  # a routing setting of a dense model means nothing
    return out


def _validated(arch: dict, names: dict) -> dict:
    """Shape checks across the dims (messages name the keys the values were read from)."""
    if "head_dim" not in arch:
        _check_heads(arch["d"], arch["H"], names.get("d", "d"), names.get("H", "H"))
    kv = arch.get("H_kv")
    if kv is not None and arch["H"] % kv:
        raise ValueError(
            f"config {names.get('H_kv', 'H_kv')}={kv} does not divide "
            f"{names.get('H', 'H')}={arch['H']}: each key/value head serves a whole group of "
            "query heads"
        )
    top, n = arch.get("experts_per_token"), arch.get("n_experts")
    if top is not None and n is not None and top > n:
        raise ValueError(
            f"config {names.get('experts_per_token')}={top} is more than "
            f"{names.get('n_experts')}={n} experts"
        )
    return arch


def _refuse_encoder_decoder(get: Callable[[str], Any], model_type: object) -> None:
    def first(keys) -> Any:
        return next((get(k) for k in keys if get(k) is not None), "?")

    dims = (
        f"--L {first(('num_decoder_layers', *_ALIASES['L']))} --d {first(_ALIASES['d'])} "
        f"--H {first(_ALIASES['H'])} --d-ff {first(_MLP)}"
    )
    raise ValueError(
        f"config is an encoder-decoder model ({model_type or 'is_encoder_decoder'}): massact "
        f"predicts decoder-only stacks; for its decoder stack give the dims explicitly ({dims})"
    )
