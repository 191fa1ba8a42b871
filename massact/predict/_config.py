"""Hugging Face config.json (GPTNeoX, GPT-2, Llama) or explicit dims -> architecture dict.

The dict {L, d, H, d_ff, rotary_pct, rotary_base} is what `Predictor.predict` and
`architecture_features` take; this module only reads configs, it knows nothing of the models.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

_GPT2 = {"L": "n_layer", "d": "n_embd", "H": "n_head"}
_NEOX = {"L": "num_hidden_layers", "d": "hidden_size", "H": "num_attention_heads"}


def arch_from_config(config: str | Path | dict) -> dict:
    """{L, d, H, d_ff, rotary_pct, rotary_base} from an HF config (GPTNeoX, GPT-2, Llama) or
    explicit dims. `config`: a dict, a config.json path, or a folder holding config.json.

    GPTNeoX: num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, rotary_pct
    or rope_parameters.partial_rotary_factor, rotary_emb_base or rope_theta (either place).
    GPT-2: n_layer, n_embd, n_head, n_inner (None = 4 d); no rotary (rotary_pct 0). Llama-style:
    as GPTNeoX, rotary_pct 1 unless partial_rotary_factor says otherwise. Explicit: L, d, H,
    d_ff (default 4 d), rotary_pct, rotary_base."""
    if isinstance(config, (str, Path)):
        config = _read_json(Path(config))
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, a path or a folder, got {type(config).__name__}")
    c = dict(config)
    if any(k in c for k in ("L", "d", "H", "d_ff")):
        return _explicit(c)
    gpt2 = "n_layer" in c or "n_embd" in c  # GPT-2: learned positions, no rotary
    names = _GPT2 if gpt2 else _NEOX  # else GPTNeoX, Llama and friends
    missing = [v for v in names.values() if c.get(v) is None]
    if missing:
        raise ValueError(
            f"config lacks {missing}: expected GPTNeoX/Llama keys (num_hidden_layers, hidden_size, "
            "num_attention_heads, intermediate_size), GPT-2 keys (n_layer, n_embd, n_head, "
            "n_inner) or explicit L, d, H, d_ff"
        )
    arch = {k: _int(c, v) for k, v in names.items()}
    return _gpt2_rest(c, arch) if gpt2 else _neox_rest(c, arch)


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


def _int(c: dict, key: str) -> int:
    """c[key] as a positive integer; ValueError naming the key otherwise."""
    v = c[key]
    bad = isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
    if bad or v != int(v) or v < 1:
        raise ValueError(f"config {key} must be a positive integer, got {v!r}")
    return int(v)


def _float(key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"config {key} must be a number, got {v!r}")
    return float(v)


def _explicit(c: dict) -> dict:
    """Explicit L, d, H (required), d_ff (default 4 d), rotary_pct and rotary_base if given."""
    missing = [k for k in ("L", "d", "H") if c.get(k) is None]
    if missing:
        raise ValueError(f"explicit dimensions lack {missing}: give L, d, H (and d_ff)")
    arch = {k: _int(c, k) for k in ("L", "d", "H")}
    arch["d_ff"] = _int(c, "d_ff") if c.get("d_ff") is not None else 4 * arch["d"]
    for k in ("rotary_pct", "rotary_base"):
        if c.get(k) is not None:
            arch[k] = _float(k, c[k])
    return arch


def _gpt2_rest(c: dict, arch: dict) -> dict:
    arch["d_ff"] = _int(c, "n_inner") if c.get("n_inner") else 4 * arch["d"]  # None = 4d
    arch["rotary_pct"] = 0.0
    return arch


def _neox_rest(c: dict, arch: dict) -> dict:
    """MLP width and rotary settings (newer configs keep the rotary ones in rope_parameters)."""
    if c.get("intermediate_size") is None:
        raise ValueError("config lacks intermediate_size (the MLP width d_ff)")
    arch["d_ff"] = _int(c, "intermediate_size")
    rope_key = "rope_parameters" if c.get("rope_parameters") else "rope_scaling"
    rope = c.get(rope_key) or {}
    if not isinstance(rope, dict):
        raise ValueError(f"config {rope_key} must be an object, got a JSON {_json_kind(rope)}")
    pct = c.get("rotary_pct", rope.get("partial_rotary_factor", c.get("partial_rotary_factor")))
    base = c.get("rotary_emb_base", c.get("rope_theta", rope.get("rope_theta")))
    if pct is None and c.get("model_type") != "gpt_neox":
        pct = 1.0  # Llama-style: rotary on the full head dimension
    if pct is not None:
        arch["rotary_pct"] = _float("rotary_pct (partial_rotary_factor)", pct)
    if base is not None:
        arch["rotary_base"] = _float("rotary_emb_base (rope_theta)", base)
    return arch
