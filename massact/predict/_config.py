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
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path
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
_COUNTS = {k for names in _ALIASES.values() for k in names} | {
    *_MLP, *_KV, *_HEAD_DIM, "num_decoder_layers",
}  # fmt: skip
_ALIASES_STD = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
# arch column, the keys it is read from, whether 0 is allowed (0 experts: a dense model)
_EXTRA_KEYS = (
    ("H_kv", _KV, False), ("head_dim", _HEAD_DIM, False),
    ("n_experts", _EXPERTS, True), ("experts_per_token", _TOP_K, True),
)  # fmt: skip
_FOUR_D = ("bloom",)  # families whose MLP is 4d without a key saying so
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


# --------------------------------------------------------------------------- transformers
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
