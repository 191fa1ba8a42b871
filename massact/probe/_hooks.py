"""Drop-in probing: per-layer statistics of decoder-layer outputs, from any probing code.

The quantity measured (FACTS: "What is measured") is each decoder layer's post-residual OUTPUT,
the input of the next layer. Forward hooks on the decoder layers see exactly that tensor; Hugging
Face's `output_hidden_states` does not for the last layer of GPTNeoX (its last entry is after the
final layer norm), which is why `collect_layer_stats` hooks the layers themselves.

Only `LayerStats` (a few numbers per sequence) are kept, never the hidden states, so a sweep over
big models holds one layer's activation at a time, as the forward pass itself does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from ..stats import LayerStats, layer_stats

# Attribute paths of the decoder-layer ModuleList, tried in order: causal-LM wrappers first,
# then the bare base models (GPTNeoXModel / LlamaModel have `.layers`, GPT2Model has `.h`).
_LAYER_PATHS = ("gpt_neox.layers", "transformer.h", "model.layers", "layers", "h")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM, in execution order.

    Supports GPTNeoX (`gpt_neox.layers`), GPT-2 (`transformer.h`) and Llama-style
    (`model.layers`) layouts, and their bare base models.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"decoder_layers expects a torch.nn.Module, got {type(model).__name__}")
    for path in _LAYER_PATHS:
        obj: Any = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return list(obj)
    raise TypeError(
        f"cannot find the decoder layers of {type(model).__name__}: expected a ModuleList at one "
        f"of {', '.join(_LAYER_PATHS)}. Pass the layer modules explicitly with "
        "collect_layer_stats(model, layers=[...]), or use stats_of()/transformer_lens_hook()."
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
    gives the 0-based decoder-layer index of each hooked layer. Results stay on the model's
    device until `table()` is called, so collecting adds no host synchronisation.
    """

    def __init__(self, k: int, layer_ids: Sequence[int]):
        self.k = k
        self.layer_ids = list(layer_ids)
        self.passes: list[list[LayerStats]] = []
        self._current: list[int] = []  # positions (in layer_ids) already filled in the last pass

    def clear(self) -> None:
        self.passes.clear()
        self._current = []

    def _start_pass(self) -> None:
        self._current = []

    def _add(self, position: int, stats: LayerStats) -> None:
        # A layer seen twice, or out of order, means a new forward pass started (also covers
        # calls that bypass the top-level module, e.g. `model.gpt_neox(...)`).
        if not self.passes or not self._current or position <= self._current[-1]:
            self.passes.append([])
            self._current = []
        self.passes[-1].append(stats)
        self._current.append(position)

    def table(self) -> pd.DataFrame:
        """One row per (pass, layer, sample).

        Columns: pass, layer, sample, top1..topk, median, ratio (float64). `sample` is the
        flattened index over the leading (batch) dims; an unbatched `[seq, d]` output is sample 0.
        """
        tops = [f"top{i + 1}" for i in range(self.k)]
        frames = []
        for p, stats_list in enumerate(self.passes):
            for position, st in enumerate(stats_list):
                st = st.cpu()
                top = st.top.reshape(-1, self.k).double().numpy()
                n = top.shape[0]
                frame = pd.DataFrame(top, columns=tops)
                frame.insert(0, "sample", range(n))
                frame.insert(0, "layer", self.layer_ids[position])
                frame.insert(0, "pass", p)
                frame["median"] = st.median.reshape(-1).double().numpy()
                frame["ratio"] = st.ratio.reshape(-1).double().numpy()
                frames.append(frame)
        if not frames:
            columns = ["pass", "layer", "sample", *tops, "median", "ratio"]
            return pd.DataFrame(
                {c: pd.Series(dtype="int64" if i < 3 else "float64") for i, c in enumerate(columns)}
            )
        out = pd.concat(frames, ignore_index=True)
        return out.astype({"pass": "int64", "layer": "int64", "sample": "int64"})


def _resolve_layers(model: torch.nn.Module, layers: Sequence[int | torch.nn.Module] | None):
    """(decoder-layer index, module) pairs to hook."""
    if layers is None:
        return list(enumerate(decoder_layers(model)))
    if isinstance(layers, (int, torch.nn.Module)):
        layers = [layers]
    pairs = []
    all_layers: list[torch.nn.Module] | None = None
    for j, item in enumerate(layers):
        if isinstance(item, torch.nn.Module):
            try:
                all_layers = decoder_layers(model) if all_layers is None else all_layers
                index = next(i for i, m in enumerate(all_layers) if m is item)
            except (TypeError, StopIteration):
                index = j  # a module outside the known layout: number it by position
            pairs.append((index, item))
        elif isinstance(item, int) and not isinstance(item, bool):
            all_layers = decoder_layers(model) if all_layers is None else all_layers
            n = len(all_layers)
            if not -n <= item < n:
                raise ValueError(f"layer index {item} out of range for a model with {n} layers")
            pairs.append((item % n, all_layers[item]))
        else:
            raise TypeError(f"layers must hold ints or modules, got {type(item).__name__}")
    if not pairs:
        raise ValueError("layers is empty: pass None for all decoder layers")
    # execution order, so that a layer index lower than the last one marks a new pass
    unique = {id(module): (index, module) for index, module in pairs}
    return sorted(unique.values(), key=lambda pair: pair[0])


@contextmanager
def collect_layer_stats(
    model: torch.nn.Module,
    k: int = 3,
    *,
    backend: str = "auto",
    layers: Sequence[int | torch.nn.Module] | None = None,
) -> Iterator[LayerStatsCollector]:
    """Hook every decoder layer (or `layers`) and collect `LayerStats` of its output per pass.

    >>> with collect_layer_stats(model) as col:
    ...     model(input_ids)              # [batch, seq]
    >>> col.table()                       # pass, layer, sample, top1..top3, median, ratio

    Statistics are over all S*d values of each sequence, padding included: feed equal-length
    unpadded sequences. Hidden states are detached, so probing inside a training step neither
    builds a graph nor keeps activations alive. Hooks are removed on exit, even on error.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    pairs = _resolve_layers(model, layers)
    collector = LayerStatsCollector(k, [i for i, _ in pairs])
    handles = []

    def make_hook(position: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            h = _hidden_of(output).detach()
            collector._add(position, layer_stats(h, k, backend=backend))

        return hook

    try:
        handles.append(
            model.register_forward_pre_hook(lambda module, args: collector._start_pass())
        )
        for position, (_, module) in enumerate(pairs):
            handles.append(module.register_forward_hook(make_hook(position)))
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
    sink: list | Callable[[str | None, LayerStats], Any], k: int = 3, backend: str = "auto"
) -> Callable[[torch.Tensor, Any], None]:
    """A TransformerLens-style hook function `(activation, hook)` that records `LayerStats`.

    Use it on `blocks.{l}.hook_resid_post` (the layer output). A list `sink` receives
    `(hook.name, stats)` tuples; a callable sink is called as `sink(hook.name, stats)`; the name
    is None for a hook object without `.name`. The activation is returned unchanged (the hook
    returns None), and transformer_lens is never imported.
    Pitfall (FACTS): TransformerLens folds layer norms and centres weights by default, which
    changes residual-stream values; load with `from_pretrained_no_processing` for raw values.
    """
    if isinstance(sink, list):
        emit: Callable[[str | None, LayerStats], Any] = lambda name, st: sink.append((name, st))  # noqa: E731
    elif callable(sink):
        emit = sink
    else:
        raise TypeError(f"sink must be a list or a callable, got {type(sink).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")

    def hook_fn(activation: torch.Tensor, hook: Any = None) -> None:
        emit(getattr(hook, "name", None), layer_stats(activation.detach(), k, backend=backend))

    return hook_fn
