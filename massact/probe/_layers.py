"""Where the transformer layers of a model are: known layouts, names, and the `layers=` choice.

Models accepted: any `torch.nn.Module` whose layers sit at a known path (Hugging Face decoder,
encoder and encoder-decoder families, multimodal wrappers' language model, TransformerLens
`HookedTransformer` and `TransformerBridge`), and nnsight wrappers (`NNsight`, `LanguageModel`,
`TransformersModel`), whose wrapped module is probed. transformer_lens and nnsight are never
imported here.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

# Encoder-decoder layouts, tried first: (encoder path, decoder path). The encoder runs first, so
# its layers come first in execution order; tables label them with a `stack` column.
_ENCODER_DECODER_PATHS = (
    ("encoder.block", "decoder.block"),  # T5, MT5, UMT5 (ForConditionalGeneration and base)
    ("model.encoder.layers", "model.decoder.layers"),  # BART, mBART, Marian, Pegasus, Whisper
    ("encoder.layers", "decoder.layers"),  # their base models
)

# Single-stack layouts, tried in order on the model, then on its HF `base_model` (the bare model
# under a task head, e.g. `electra` or `distilbert`, whose own layout is one of the suffixes).
_LAYER_PATHS = (
    "blocks",  # TransformerLens HookedTransformer / TransformerBridge (first: a bridge also
    # forwards attribute lookups to the HF model it wraps), MPT base model
    "gpt_neox.layers",  # GPTNeoX (Pythia)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi, OLMo, StableLM, Mixtral, ...
    "model.language_model.layers",  # multimodal wrappers (transformers 5): Gemma3, Qwen2-VL, Llava
    "language_model.model.layers",  # multimodal wrappers (transformers 4)
    "language_model.layers",
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "bert.encoder.layer",  # BERT
    "roberta.encoder.layer",  # RoBERTa, XLM-R
    "encoder.layer",  # BERT-style base models
    "encoder.block",  # T5EncoderModel
    "decoder.layers",  # OPT base model
    "transformer.layer",  # DistilBERT base model
    "layers",  # GPTNeoX / Llama base models
    "h",  # GPT-2 base model
)


def as_module(model: Any) -> torch.nn.Module:
    """The torch module behind `model`: itself, or the module an nnsight wrapper holds.

    nnsight's `NNsight`/`LanguageModel`/`TransformersModel` (Envoys) keep the wrapped module in
    `_module`; one built lazily (`dispatch=False`) is dispatched first, as its first trace would
    do, so that hooks go on the modules that will run.
    """
    if isinstance(model, torch.nn.Module):
        return model
    inner = vars(model).get("_module") if hasattr(model, "__dict__") else None
    if isinstance(inner, torch.nn.Module):
        if getattr(model, "dispatched", True) is False and callable(
            getattr(model, "dispatch", None)
        ):
            model.dispatch()
            inner = vars(model)["_module"]
        return inner
    raise TypeError(
        f"expects a torch.nn.Module or an nnsight wrapper of one, got {type(model).__name__}"
    )


def _get_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _module_list(obj: Any, path: str) -> list[torch.nn.Module] | None:
    found = _get_path(obj, path)
    if isinstance(found, torch.nn.ModuleList) and len(found) > 0:
        return list(found)
    return None


def _module_lists(model: torch.nn.Module, limit: int = 12) -> list[str]:
    """'path (length)' of the outermost ModuleLists of `model` (those not inside another)."""
    found: list[str] = []
    outer: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name:
            if any(name.startswith(prefix + ".") for prefix in outer):
                continue
            outer.append(name)
            found.append(f"{name} ({len(module)})")
    if len(found) > limit:
        found = [*found[:limit], f"... {len(found) - limit} more"]
    return found


def layer_stacks(model: Any) -> list[tuple[str | None, list[torch.nn.Module]]]:
    """The layer stacks of `model` in execution order: `(stack, layers)` pairs.

    One `(None, layers)` pair for decoder-only and encoder-only models; `("encoder", ...)` then
    `("decoder", ...)` for encoder-decoder models (T5, BART, ...). `model` may be an nnsight
    wrapper (its module is used). Raises TypeError naming the model's ModuleLists when no
    known layout matches.
    """
    module = as_module(model)
    roots = [module]
    base = getattr(module, "base_model", None)  # Hugging Face: the bare model under a head
    if isinstance(base, torch.nn.Module) and base is not module:
        roots.append(base)
    for root in roots:
        for enc_path, dec_path in _ENCODER_DECODER_PATHS:
            encoder, decoder = _module_list(root, enc_path), _module_list(root, dec_path)
            if encoder is not None and decoder is not None:
                return [("encoder", encoder), ("decoder", decoder)]
        for path in _LAYER_PATHS:
            layers = _module_list(root, path)
            if layers is not None:
                return [(None, layers)]
    lists = _module_lists(module)
    known = ", ".join(_LAYER_PATHS[:4])
    searched = (
        f"no ModuleList at a known layer path ({known}, ... {len(_LAYER_PATHS)} paths and "
        f"{len(_ENCODER_DECODER_PATHS)} encoder/decoder pairs, see massact.probe._layers)"
    )
    if lists:
        first = lists[0].rsplit(" (", 1)[0]
        has = f"Its ModuleLists: {', '.join(lists)}"
        explicit = f"collect_layer_stats(model, layers=list(model.get_submodule({first!r})))"
    else:
        has, explicit = "It has no ModuleList", "collect_layer_stats(model, layers=[...])"
    raise TypeError(
        f"cannot find the decoder layers of {type(module).__name__}: {searched}. {has}. "
        f"Pass the layer modules explicitly, e.g. {explicit}, or use "
        "stats_of()/transformer_lens_hook()."
    )


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer layers of a model, in execution order.

    Decoder-only models: their decoder layers (GPTNeoX, GPT-2, Llama-style and ~20 more HF
    families, OPT, MPT, TransformerLens `blocks`); encoder-only models (BERT, RoBERTa): the
    encoder layers; encoder-decoder models (T5, BART): the encoder layers then the decoder
    layers (`layer_stacks` tells them apart); multimodal wrappers (Gemma3, Qwen2-VL, Llava):
    the language model's layers. Bare base models work too, and nnsight wrappers.
    """
    return [layer for _, layers in layer_stacks(model) for layer in layers]


def layer_names(model: Any) -> list[str]:
    """A label per layer of `decoder_layers(model)`: '0', '1', ... or 'encoder.0', 'decoder.0'.

    The labels are accepted by `collect_layer_stats(model, layers=[...])`.
    """
    return [
        str(i) if stack is None else f"{stack}.{i}"
        for stack, layers in layer_stacks(model)
        for i in range(len(layers))
    ]


def resolve_layers(model: Any, layers: Any) -> list[tuple[int, str | None, torch.nn.Module]]:
    """(index within stack, stack, module) triples to hook, in execution order."""
    if layers is None:
        return [
            (i, stack, layer)
            for stack, stack_layers in layer_stacks(model)
            for i, layer in enumerate(stack_layers)
        ]
    if isinstance(layers, (numbers.Integral, str)):
        layers = [layers]
    elif not isinstance(layers, (list, tuple)):
        try:  # one module, an nnsight envoy of one, or a whole ModuleList (model.gpt_neox.layers)
            module = as_module(layers)
        except TypeError:
            module = None
        if isinstance(module, torch.nn.ModuleList):
            layers = list(module)
        elif module is not None:
            layers = [module]
    known: list[tuple[int, str | None, torch.nn.Module]] | None = None

    def all_layers() -> list[tuple[int, str | None, torch.nn.Module]]:
        nonlocal known
        if known is None:
            known = resolve_layers(model, None)
        return known

    picked: list[tuple[int, tuple[int, str | None, torch.nn.Module]]] = []  # (order, triple)
    for j, item in enumerate(layers):
        if isinstance(item, bool):
            raise TypeError("layers must hold ints, names or modules, got bool")
        if isinstance(item, numbers.Integral):
            item = int(item)
            n = len(all_layers())
            if not -n <= item < n:
                raise ValueError(f"layer index {item} out of range for a model with {n} layers")
            picked.append((item % n, all_layers()[item]))
        elif isinstance(item, str):
            names = layer_names(model)
            if item not in names:
                raise ValueError(f"no layer named {item!r}; this model's layers are {names}")
            position = names.index(item)
            picked.append((position, all_layers()[position]))
        else:
            try:
                module = as_module(item)
            except TypeError:
                raise TypeError(
                    f"layers must hold ints, names or modules, got {type(item).__name__}"
                ) from None
            try:
                position = next(i for i, t in enumerate(all_layers()) if t[2] is module)
                picked.append((position, all_layers()[position]))
            except (TypeError, StopIteration):
                picked.append((j, (j, None, module)))  # outside the known layout: by position
    if not picked:
        raise ValueError("layers is empty: pass None for all layers")
    # execution order, so that a layer index lower than the last one marks a new pass
    unique = {id(triple[2]): (order, triple) for order, triple in picked}
    return [triple for _, triple in sorted(unique.values(), key=lambda pair: pair[0])]
