"""Hugging Face config.json (GPTNeoX, GPT-2, Llama) or explicit dims -> architecture dict.

The dict {L, d, H, d_ff, rotary_pct, rotary_base} is what `Predictor.predict` and
`architecture_features` take; this module only reads configs, it knows nothing of the models.
"""

from __future__ import annotations

import json
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
    arch = {k: int(c[v]) for k, v in names.items()}
    return _gpt2_rest(c, arch) if gpt2 else _neox_rest(c, arch)


def _read_json(path: Path) -> dict:
    """A config.json file, or the config.json inside a folder."""
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found (give a config.json or its folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _explicit(c: dict) -> dict:
    """Explicit L, d, H (required), d_ff (default 4 d), rotary_pct and rotary_base if given."""
    missing = [k for k in ("L", "d", "H") if c.get(k) is None]
    if missing:
        raise ValueError(f"explicit dimensions lack {missing}: give L, d, H (and d_ff)")
    arch = {k: c[k] for k in ("L", "d", "H")}
    arch["d_ff"] = c.get("d_ff", 4 * c["d"])
    for k in ("rotary_pct", "rotary_base"):
        if k in c:
            arch[k] = c[k]
    return arch


def _gpt2_rest(c: dict, arch: dict) -> dict:
    arch["d_ff"] = int(c.get("n_inner") or 4 * arch["d"])  # GPT-2: n_inner None = 4d
    arch["rotary_pct"] = 0.0
    return arch


def _neox_rest(c: dict, arch: dict) -> dict:
    """MLP width and rotary settings (newer configs keep the rotary ones in rope_parameters)."""
    if c.get("intermediate_size") is None:
        raise ValueError("config lacks intermediate_size (the MLP width d_ff)")
    arch["d_ff"] = int(c["intermediate_size"])
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    pct = c.get("rotary_pct", rope.get("partial_rotary_factor", c.get("partial_rotary_factor")))
    base = c.get("rotary_emb_base", c.get("rope_theta", rope.get("rope_theta")))
    if pct is None and c.get("model_type") != "gpt_neox":
        pct = 1.0  # Llama-style: rotary on the full head dimension
    if pct is not None:
        arch["rotary_pct"] = float(pct)
    if base is not None:
        arch["rotary_base"] = float(base)
    return arch
