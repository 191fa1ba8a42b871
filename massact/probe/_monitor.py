"""Watch massive activations grow during training: per-layer top1/median every N steps.

`RatioMonitor` is a plain object for custom loops; `RatioMonitorCallback` plugs the same thing
into a Hugging Face `Trainer`. Both run one forward pass on a fixed probe batch, in eval mode and
under `torch.no_grad()`, then restore each module's previous train/eval flag, so the probe
neither changes the training (no dropout draw, no graph, no gradient) nor depends on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback

from ._hooks import collect_layer_stats


class RatioMonitor:
    """Record per-layer statistics of a fixed probe batch every `every` steps.

    probe: input ids `[batch, seq]` (a LongTensor) or a mapping of model keyword arguments
    (e.g. a tokenizer's BatchEncoding); moved to the model's device at each probe.
    `history` is a DataFrame with one row per (step, layer, sample): step, layer, sample,
    top1..topk, median, ratio. `ratios()` gives the mean ratio per step x layer.

    >>> monitor = RatioMonitor(probe_ids, every=100)
    >>> for step in range(n_steps):
    ...     train_step(model)
    ...     monitor.maybe_record(step, model)
    """

    def __init__(
        self,
        probe: torch.Tensor | Mapping[str, Any],
        every: int = 100,
        *,
        k: int = 3,
        backend: str = "auto",
        layers: Sequence[int] | None = None,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (steps between probes), got {every!r}")
        if isinstance(probe, torch.Tensor):
            if probe.dtype not in (torch.int64, torch.int32) or probe.ndim != 2:
                raise TypeError(
                    "probe must be input ids [batch, seq] (int64) or a mapping of model kwargs, "
                    f"got a {probe.dtype} tensor of shape {tuple(probe.shape)}"
                )
        elif not isinstance(probe, Mapping):
            raise TypeError(
                f"probe must be a tensor of input ids or a mapping, got {type(probe).__name__}"
            )
        self.probe = probe
        self.every = every
        self.k = k
        self.backend = backend
        self.layers = layers
        self._frames: list[pd.DataFrame] = []
        self._steps: set[int] = set()

    def maybe_record(self, step: int, model: torch.nn.Module) -> bool:
        """Probe if `step` is a multiple of `every` and not yet recorded; True if it probed."""
        if step % self.every != 0 or step in self._steps:
            return False
        self.record(step, model)
        return True

    def record(self, step: int, model: torch.nn.Module) -> pd.DataFrame:
        """Probe now, whatever the step; returns this step's rows."""
        modes = [(m, m.training) for m in model.modules()]
        device = _device_of(model)
        try:
            model.eval()
            with (
                torch.no_grad(),
                collect_layer_stats(model, self.k, backend=self.backend, layers=self.layers) as col,
            ):
                if isinstance(self.probe, torch.Tensor):
                    model(self.probe.to(device))
                else:
                    model(**{key: _to(v, device) for key, v in self.probe.items()})
        finally:
            for module, mode in modes:
                module.training = mode
        frame = col.table().drop(columns="pass")
        frame.insert(0, "step", step)
        frame = frame.astype({"step": "int64"})
        self._frames.append(frame)
        self._steps.add(step)
        return frame

    @property
    def history(self) -> pd.DataFrame:
        """All recorded rows: step, layer, sample, top1..topk, median, ratio."""
        if not self._frames:
            tops = [f"top{i + 1}" for i in range(self.k)]
            cols = {c: pd.Series(dtype="int64") for c in ("step", "layer", "sample")}
            cols |= {c: pd.Series(dtype="float64") for c in (*tops, "median", "ratio")}
            return pd.DataFrame(cols)
        return pd.concat(self._frames, ignore_index=True)

    def ratios(self) -> pd.DataFrame:
        """Mean top1/median over the probe samples: index step, one column per layer (Eq. 8)."""
        return self.history.pivot_table(
            index="step", columns="layer", values="ratio", aggfunc="mean"
        )


class RatioMonitorCallback(TrainerCallback):
    """Hugging Face `Trainer` callback: a `RatioMonitor` probed at step 0 and every N steps.

    >>> cb = RatioMonitorCallback(probe_ids, every=200)
    >>> Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()
    >>> cb.history            # step, layer, sample, top1..top3, median, ratio

    With `log=True` the mean ratio of each layer is also added to the Trainer's log history
    as `massact/ratio_layer<l>`.
    """

    def __init__(
        self,
        probe: torch.Tensor | Mapping[str, Any],
        every: int = 100,
        *,
        k: int = 3,
        backend: str = "auto",
        layers: Sequence[int] | None = None,
        log: bool = False,
    ):
        self.monitor = RatioMonitor(probe, every, k=k, backend=backend, layers=layers)
        self.log = log

    @property
    def history(self) -> pd.DataFrame:
        return self.monitor.history

    def _probe(self, state: Any, model: torch.nn.Module | None) -> None:
        if model is None:
            return
        if self.monitor.maybe_record(int(state.global_step), model) and self.log:
            rows = self.monitor.history
            rows = rows[rows["step"] == state.global_step]
            means = rows.groupby("layer")["ratio"].mean()
            entry = {f"massact/ratio_layer{int(l)}": float(r) for l, r in means.items()}
            state.log_history.append({**entry, "step": int(state.global_step)})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._probe(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._probe(state, model)


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value
