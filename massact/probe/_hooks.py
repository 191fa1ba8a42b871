"""Drop-in probing: per-layer statistics of decoder-layer outputs, from any probing code.

The quantity measured (FACTS: "What is measured") is each decoder layer's post-residual OUTPUT,
the input of the next layer. Forward hooks on the decoder layers see exactly that tensor; Hugging
Face's `output_hidden_states` does not for the last layer of GPTNeoX (its last entry is after the
final layer norm), which is why `collect_layer_stats` hooks the layers themselves.

Only `LayerStats` (a few numbers per sequence) are kept, never the hidden states, so a sweep over
big models holds one layer's activation at a time, as the forward pass itself does.

Models accepted: any `torch.nn.Module` whose layers sit at a known path (Hugging Face decoder,
encoder and encoder-decoder families, multimodal wrappers' language model, TransformerLens
`HookedTransformer` and `TransformerBridge`), and nnsight wrappers (`NNsight`, `LanguageModel`,
`TransformersModel`), whose wrapped module is probed. transformer_lens and nnsight are never
imported here.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from ..stats import LayerStats, layer_stats

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


def _as_module(model: Any) -> torch.nn.Module:
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
    module = _as_module(model)
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
        f"{len(_ENCODER_DECODER_PATHS)} encoder/decoder pairs, see massact.probe._hooks)"
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


def _hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor inside a layer's output.

    transformers v5 layers return the tensor itself; v4 layers return a tuple whose first entry
    is the hidden state; some return a ModelOutput-like object.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    for attr in ("hidden_states", "last_hidden_state"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(
        f"cannot find a hidden-state tensor in a layer output of type {type(output).__name__}; "
        "expected a tensor, a tuple starting with one, or an object with `.hidden_states`"
    )


class LayerStatsCollector:
    """Statistics gathered by `collect_layer_stats`.

    `passes[p][i]` is the `LayerStats` of the i-th hooked layer in forward pass p; its leading
    dims are the batch dims of the hidden state (`[batch]` for `[batch, seq, d]`). `layer_ids`
    gives the 0-based index of each hooked layer within its stack; `stacks` names that stack
    ('encoder' / 'decoder' for encoder-decoder models, None otherwise) and `layer_names` joins
    the two ('3', or 'decoder.1'). Results stay on the model's device until `table()` is called,
    so collecting adds no host synchronisation.
    """

    def __init__(
        self, k: int, layer_ids: Sequence[int], stacks: Sequence[str | None] | None = None
    ):
        self.k = k
        self.layer_ids = list(layer_ids)
        self.stacks = list(stacks) if stacks is not None else [None] * len(self.layer_ids)
        if len(self.stacks) != len(self.layer_ids):
            raise ValueError("stacks must give one entry per layer id")
        self.passes: list[list[LayerStats]] = []
        self._pass_positions: list[list[int]] = []  # positions (in layer_ids) of each entry
        self._current: list[int] = []  # positions already filled in the last pass

    @property
    def layer_names(self) -> list[str]:
        return [
            str(i) if stack is None else f"{stack}.{i}"
            for i, stack in zip(self.layer_ids, self.stacks, strict=True)
        ]

    @property
    def _stacked(self) -> bool:
        return any(stack is not None for stack in self.stacks)

    def clear(self) -> None:
        self.passes.clear()
        self._pass_positions.clear()
        self._current = []

    def _start_pass(self) -> None:
        self._current = []

    def _add(self, position: int, stats: LayerStats) -> None:
        # A layer seen twice, or out of order, means a new forward pass started (also covers
        # calls that bypass the top-level module, e.g. `model.gpt_neox(...)`, and the decoder
        # steps of an encoder-decoder `generate`).
        if not self.passes or not self._current or position <= self._current[-1]:
            self.passes.append([])
            self._current = []
            self._pass_positions.append(self._current)
        self.passes[-1].append(stats)
        self._current.append(position)

    def table(self) -> pd.DataFrame:
        """One row per (pass, layer, sample).

        Columns: pass, layer, sample, top1..topk, median, ratio (float64). `sample` is the
        flattened index over the leading (batch) dims; an unbatched `[seq, d]` output is sample 0.
        Encoder-decoder models get a `stack` column ('encoder' / 'decoder') after `pass`, and
        `layer` counts within each stack.
        """
        tops = [f"top{i + 1}" for i in range(self.k)]
        frames = []
        for p, stats_list in enumerate(self.passes):
            positions = self._positions_of_pass(p)
            for position, st in zip(positions, stats_list, strict=True):
                st = st.cpu()
                top = st.top.reshape(-1, self.k).double().numpy()
                n = top.shape[0]
                frame = pd.DataFrame(top, columns=tops)
                frame.insert(0, "sample", range(n))
                frame.insert(0, "layer", self.layer_ids[position])
                if self._stacked:
                    frame.insert(0, "stack", self.stacks[position])
                frame.insert(0, "pass", p)
                frame["median"] = st.median.reshape(-1).double().numpy()
                frame["ratio"] = st.ratio.reshape(-1).double().numpy()
                frames.append(frame)
        if not frames:
            ints = ["pass", *(["stack"] if self._stacked else []), "layer", "sample"]
            cols = {c: pd.Series(dtype="int64") for c in ints}
            if self._stacked:
                cols["stack"] = pd.Series(dtype="object")
            cols |= {c: pd.Series(dtype="float64") for c in (*tops, "median", "ratio")}
            return pd.DataFrame(cols)
        out = pd.concat(frames, ignore_index=True)
        return out.astype({"pass": "int64", "layer": "int64", "sample": "int64"})

    def _positions_of_pass(self, p: int) -> list[int]:
        """Positions (in layer_ids) of the entries of pass p: a pass may start mid-model (the
        decoder steps of an encoder-decoder `generate`)."""
        if p < len(self._pass_positions) and len(self._pass_positions[p]) == len(self.passes[p]):
            return self._pass_positions[p]
        return list(range(len(self.passes[p])))  # a pass built by hand


def _resolve_layers(model: Any, layers: Any) -> list[tuple[int, str | None, torch.nn.Module]]:
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
            module = _as_module(layers)
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
            known = _resolve_layers(model, None)
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
                module = _as_module(item)
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


@contextmanager
def collect_layer_stats(
    model: Any,
    k: int = 3,
    *,
    backend: str = "auto",
    layers: Sequence[int | str | torch.nn.Module] | None = None,
) -> Iterator[LayerStatsCollector]:
    """Hook every layer (see `decoder_layers`) or `layers`, collect `LayerStats` of each output.

    >>> with collect_layer_stats(model) as col:
    ...     model(input_ids)              # [batch, seq]
    >>> col.table()                       # pass, layer, sample, top1..top3, median, ratio

    model: a torch module (Hugging Face, TransformerLens HookedTransformer / TransformerBridge,
    ...) or an nnsight wrapper; run it as usual inside the block (`model.trace(...)` for
    nnsight). layers: indices into `decoder_layers(model)`, names from `layer_names(model)`
    ('decoder.1'), or modules. Statistics are over all S*d values of each sequence, padding
    included: feed equal-length unpadded sequences. Hidden states are detached, so probing
    inside a training step neither builds a graph nor keeps activations alive. Hooks are
    removed on exit, even on error.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    module = _as_module(model)
    triples = _resolve_layers(model, layers)
    collector = LayerStatsCollector(
        k, [i for i, _, _ in triples], [stack for _, stack, _ in triples]
    )
    handles = []

    def make_hook(position: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: Any, output: Any) -> None:
            h = _hidden_of(output).detach()
            collector._add(position, layer_stats(h, k, backend=backend))

        return hook

    try:
        handles.append(module.register_forward_pre_hook(lambda m, args: collector._start_pass()))
        for position, (_, _, layer) in enumerate(triples):
            handles.append(layer.register_forward_hook(make_hook(position)))
        yield collector
    finally:
        for handle in handles:
            handle.remove()


def _unwrap(value: Any) -> torch.Tensor:
    """A tensor from what probing libraries hand out (tensor, layer-output tuple, saved proxy)."""
    if not isinstance(value, torch.Tensor) and isinstance(
        getattr(value, "value", None), torch.Tensor
    ):
        value = value.value  # older nnsight saved proxies
    return _hidden_of(value)


def stats_of(
    hidden_states: Sequence[torch.Tensor] | torch.Tensor, k: int = 3, backend: str = "auto"
) -> list[LayerStats]:
    """`LayerStats` of plain tensors, e.g. states saved by nnsight or `output_hidden_states`.

    A single tensor `[..., S, d]` is one layer's state and gives a one-element list; a sequence
    gives one entry per element (a layer-output tuple counts by its first tensor). To split a
    stacked `[L, batch, S, d]` tensor per layer, pass `t.unbind(0)`. Note: for GPTNeoX the last
    entry of `output_hidden_states` is after the final layer norm, not the last layer's output.
    """
    if isinstance(hidden_states, torch.Tensor) or hasattr(hidden_states, "value"):
        items: list[Any] = [hidden_states]
    elif isinstance(hidden_states, Sequence) and not isinstance(hidden_states, str):
        items = list(hidden_states)
    else:
        raise TypeError(
            "stats_of expects a tensor or a sequence of tensors, "
            f"got {type(hidden_states).__name__}"
        )
    if not items:
        raise ValueError("stats_of got an empty sequence of hidden states")
    return [layer_stats(_unwrap(item).detach(), k, backend=backend) for item in items]


def transformer_lens_hook(
    sink: list | Callable[[str | None, LayerStats], Any],
    k: int = 3,
    backend: str = "auto",
    *,
    name: str | None = None,
) -> Callable[[torch.Tensor, Any], None]:
    """A TransformerLens-style hook function `(activation, hook)` that records `LayerStats`.

    Use it on `blocks.{l}.hook_resid_post` (the layer output). A list `sink` receives
    `(name, stats)` tuples; a callable sink is called as `sink(name, stats)`. The name recorded
    is `name` when given, else `hook.name` (None for a hook object without `.name`).
    TransformerLens 4's `TransformerBridge` resolves the legacy names you hook
    (`blocks.0.hook_resid_post`) to canonical ones (`blocks.0.hook_out`), and `hook.name` is the
    canonical one; pass `name=` to record the name you hooked:

    >>> names = [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    >>> hooks = [(n, transformer_lens_hook(sink, name=n)) for n in names]
    >>> bridge.run_with_hooks(ids, fwd_hooks=hooks)

    The activation is returned unchanged (the hook returns None), and transformer_lens is never
    imported. Pitfall (FACTS): TransformerLens 3's `HookedTransformer.from_pretrained` and TL 4's
    `enable_compatibility_mode()` fold layer norms and centre weights, which changes
    residual-stream values; TL 3's `from_pretrained_no_processing` and TL 4's plain
    `TransformerBridge.boot_transformers` keep the model's raw values.
    """
    if isinstance(sink, list):
        emit: Callable[[str | None, LayerStats], Any] = lambda name, st: sink.append((name, st))  # noqa: E731
    elif callable(sink):
        emit = sink
    else:
        raise TypeError(f"sink must be a list or a callable, got {type(sink).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")

    def hook_fn(activation: torch.Tensor, hook: Any = None) -> None:
        label = name if name is not None else getattr(hook, "name", None)
        emit(label, layer_stats(activation.detach(), k, backend=backend))

    return hook_fn
