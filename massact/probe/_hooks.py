"""Drop-in probing: per-layer statistics of decoder-layer outputs, from any probing code.

The quantity measured (FACTS: "What is measured") is each decoder layer's post-residual OUTPUT,
the input of the next layer. Forward hooks on the decoder layers see exactly that tensor; Hugging
Face's `output_hidden_states` does not for the last layer of GPTNeoX (its last entry is after the
final layer norm), which is why `collect_layer_stats` hooks the layers themselves.

Only `LayerStats` (a few numbers per sequence) are kept, never the hidden states, so a sweep over
big models holds one layer's activation at a time, as the forward pass itself does.

Where the layers are is `_layers`' job (Hugging Face, TransformerLens, nnsight); which tokens
count (the batch's padding mask, `skip_first`) is `_tokens`'. transformer_lens and nnsight are
never imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from ..stats import LayerStats, layer_stats
from ._layers import as_module, resolve_layers
from ._tokens import (
    ForwardMasks,
    check_skip_first,
    counted_tokens,
    fit_to_hidden,
    padding_mask,
    real_tokens,
)


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


@contextmanager
def collect_layer_stats(
    model: Any,
    k: int = 3,
    *,
    backend: str = "auto",
    layers: Sequence[int | str | torch.nn.Module] | None = None,
    attention_mask: torch.Tensor | str | None = "auto",
    skip_first: int = 0,
) -> Iterator[LayerStatsCollector]:
    """Hook every layer (see `decoder_layers`) or `layers`, collect `LayerStats` of each output.

    >>> with collect_layer_stats(model) as col:
    ...     model(input_ids)              # [batch, seq]
    >>> col.table()                       # pass, layer, sample, top1..top3, median, ratio

    model: a torch module (Hugging Face, TransformerLens HookedTransformer / TransformerBridge,
    ...) or an nnsight wrapper; run it as usual inside the block (`model.trace(...)` for
    nnsight). layers: indices into `decoder_layers(model)`, names from `layer_names(model)`
    ('decoder.1'), or modules. Hidden states are detached, so probing inside a training step
    neither builds a graph nor keeps activations alive. Hooks are removed on exit, even on error.

    Which tokens count (padded batches): attention_mask="auto" reads the 2D padding mask
    `[batch, seq]` of each forward call (`attention_mask=`, keyword or positional, as in
    `model(**tokenizer(texts, padding=True, return_tensors="pt"))`; encoder-decoder models: the
    encoder's, and `decoder_attention_mask` for the decoder) and counts only the real tokens;
    a call without one counts every token. A tensor: that mask for every pass (encoder-decoder
    models: for the encoder; the decoder's still comes from the call). None: every token
    counts, a mask in the call is ignored. A mask with more columns than a layer's sequence
    (decoding with a KV cache) applies by its last columns; 4D attention masks are refused
    (pass the 2D one). skip_first=n leaves out the first n real tokens of every sequence (the
    BOS token holds the attention-sink activation), found along the mask, so left padding is
    handled; without a mask, positions 0..n-1. A sequence with no token left gets NaN
    statistics (and -1 positions); `top_token` stays the position in the padded batch.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    skip_first = check_skip_first(skip_first)
    read_calls = isinstance(attention_mask, str)
    if read_calls and attention_mask != "auto":
        raise ValueError(
            f"attention_mask must be 'auto', None or a [batch, seq] tensor, got {attention_mask!r}"
        )
    explicit = None if read_calls or attention_mask is None else padding_mask(attention_mask)
    module = as_module(model)
    triples = resolve_layers(model, layers)
    collector = LayerStatsCollector(
        k, [i for i, _, _ in triples], [stack for _, stack, _ in triples]
    )
    masks = ForwardMasks(skip_first, explicit)
    handles = []

    def make_hook(position: int) -> Callable[..., None]:
        stack, where = collector.stacks[position], f"layer {collector.layer_names[position]}"

        def hook(_module: torch.nn.Module, args: Any, output: Any) -> None:
            h = _hidden_of(output).detach()
            kept = masks.kept(stack)
            if kept is not None:
                mask = fit_to_hidden(kept, h, where)
            else:
                mask = counted_tokens(h.shape[:-1], None, skip_first, h.device)
            collector._add(position, layer_stats(h, k, mask=mask, backend=backend))

        return hook

    try:
        handles.append(module.register_forward_pre_hook(lambda m, args: collector._start_pass()))
        if attention_mask is not None:
            for entry in _entry_modules(module, collector.stacks):
                handles.extend(masks.hook(entry))
        for position, (_, _, layer) in enumerate(triples):
            handles.append(layer.register_forward_hook(make_hook(position)))
        yield collector
    finally:
        for handle in handles:
            handle.remove()


def _entry_modules(module: torch.nn.Module, stacks: list[str | None]) -> list[torch.nn.Module]:
    """The modules a forward call enters first: the model, its HF base model and, for
    encoder-decoder models, the encoder (`generate` runs it on its own)."""
    entries = [module, getattr(module, "base_model", None)]
    if "encoder" in stacks and callable(getattr(module, "get_encoder", None)):
        entries.append(module.get_encoder())
    modules = [m for m in entries if isinstance(m, torch.nn.Module)]
    return list({id(m): m for m in modules}.values())


def _unwrap(value: Any) -> torch.Tensor:
    """A tensor from what probing libraries hand out (tensor, layer-output tuple, saved proxy)."""
    if not isinstance(value, torch.Tensor) and isinstance(
        getattr(value, "value", None), torch.Tensor
    ):
        value = value.value  # older nnsight saved proxies
    return _hidden_of(value)


def stats_of(
    hidden_states: Sequence[torch.Tensor] | torch.Tensor,
    k: int = 3,
    backend: str = "auto",
    *,
    mask: torch.Tensor | None = None,
    skip_first: int = 0,
) -> list[LayerStats]:
    """`LayerStats` of plain tensors, e.g. states saved by nnsight or `output_hidden_states`.

    A single tensor `[..., S, d]` is one layer's state and gives a one-element list; a sequence
    gives one entry per element (a layer-output tuple counts by its first tensor). To split a
    stacked `[L, batch, S, d]` tensor per layer, pass `t.unbind(0)`. Note: for GPTNeoX the last
    entry of `output_hidden_states` is after the final layer norm, not the last layer's output.

    mask: the real tokens (True or nonzero; e.g. the batch's `attention_mask` [batch, seq]),
    broadcastable to each state's [..., S], applied to every state; skip_first=n leaves out
    the first n real tokens of each sequence (positions 0..n-1 without a mask).
    """
    skip_first = check_skip_first(skip_first)
    real = None if mask is None else real_tokens(mask)
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
    stats = []
    for item in items:
        h = _unwrap(item).detach()
        counted = counted_tokens(h.shape[:-1], real, skip_first, h.device)
        stats.append(layer_stats(h, k, mask=counted, backend=backend))
    return stats


def transformer_lens_hook(
    sink: list | Callable[[str | None, LayerStats], Any],
    k: int = 3,
    backend: str = "auto",
    *,
    name: str | None = None,
    mask: torch.Tensor | None = None,
    skip_first: int = 0,
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

    mask: the real tokens of the batch the hook will see (True or nonzero, broadcastable to the
    activation's [batch, S]; TransformerLens pads lists of strings, and
    `transformer_lens.utils.get_attention_mask(model.tokenizer, tokens, prepend_bos)` gives
    the mask); skip_first=n leaves out the first n real tokens of each sequence (positions
    0..n-1 without a mask), e.g. the BOS token TransformerLens prepends.

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
    skip_first = check_skip_first(skip_first)
    real = None if mask is None else real_tokens(mask)

    def hook_fn(activation: torch.Tensor, hook: Any = None) -> None:
        label = name if name is not None else getattr(hook, "name", None)
        h = activation.detach()
        counted = counted_tokens(h.shape[:-1], real, skip_first, h.device)
        emit(label, layer_stats(h, k, mask=counted, backend=backend))

    return hook_fn
