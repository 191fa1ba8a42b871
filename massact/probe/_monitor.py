"""Watch massive activations grow during training: per-layer top1/median every N steps.

`RatioMonitor` is a plain object for custom loops; `RatioMonitorCallback` plugs the same thing
into a Hugging Face `Trainer`. Both run one forward pass on a fixed probe batch, in eval mode and
under `torch.no_grad()`, then restore each module's previous train/eval flag, so the probe
neither changes the training (no dropout draw, no graph, no gradient) nor depends on it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ._hooks import collect_layer_stats
from ._tokens import check_skip_first, padding_mask


class RatioMonitor:
    """Record per-layer statistics of a fixed probe batch every `every` steps.

    probe: input ids `[batch, seq]` (a LongTensor) or a mapping of model keyword arguments
    (e.g. a tokenizer's BatchEncoding); moved to the model's device at each probe. A padded
    probe counts only its real tokens: the mapping's `attention_mask` ([batch, seq], 1 = real
    token) is read from the forward call (see `collect_layer_stats`). skip_first=n leaves out
    the first n real tokens of each sequence (the BOS token holds the attention sink).
    `history` is a DataFrame with one row per (step, layer, sample): step, layer, sample,
    top1..topk, median, ratio; `history.attrs["massact"]` (`token_selection`) says which tokens
    counted (`skip_first`, `attention_mask`: whether the probe has one) and is saved with it.
    `ratios()` gives the mean ratio per step x layer.

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
        layers: Sequence[int | str] | None = None,
        skip_first: int = 0,
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
        else:
            _check_probe_mask(probe)
        self.probe = probe
        self.every = every
        self.k = k
        self.backend = backend
        self.layers = layers
        self.skip_first = check_skip_first(skip_first)
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
                collect_layer_stats(
                    model,
                    self.k,
                    backend=self.backend,
                    layers=self.layers,
                    skip_first=self.skip_first,
                ) as col,
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
    def token_selection(self) -> dict[str, Any]:
        """Which tokens the statistics count: {"skip_first": n, "attention_mask": bool}."""
        masked = isinstance(self.probe, Mapping) and self.probe.get("attention_mask") is not None
        return {"skip_first": self.skip_first, "attention_mask": masked}

    @property
    def history(self) -> pd.DataFrame:
        """All recorded rows: step, layer, sample, top1..topk, median, ratio (encoder-decoder
        models: step, stack, layer, ...); `.attrs["massact"]` is `token_selection`."""
        if not self._frames:
            tops = [f"top{i + 1}" for i in range(self.k)]
            cols = {c: pd.Series(dtype="int64") for c in ("step", "layer", "sample")}
            cols |= {c: pd.Series(dtype="float64") for c in (*tops, "median", "ratio")}
            history = pd.DataFrame(cols)
        else:
            history = pd.concat(self._frames, ignore_index=True)
        history.attrs = {"massact": self.token_selection}
        return history

    def ratios(self) -> pd.DataFrame:
        """Mean top1/median over the probe samples: index step, one column per layer (Eq. 8);
        (stack, layer) column pairs for encoder-decoder models."""
        history = self.history
        columns = ["stack", "layer"] if "stack" in history.columns else "layer"
        return history.pivot_table(index="step", columns=columns, values="ratio", aggfunc="mean")

    def save(self, path: str | os.PathLike) -> None:
        """Write the history to a Parquet file (exact float64 values, `token_selection` in its
        metadata), atomically."""
        tmp = f"{os.fspath(path)}.tmp"
        self.history.to_parquet(tmp, index=False)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike, *, up_to: int | None = None) -> None:
        """Replace the history with one written by `save` (its rows with step <= up_to).

        A history that counted other tokens (another `skip_first`, a probe with or without an
        attention mask) is refused: its ratios would not continue this monitor's.
        """
        frame = pd.read_parquet(path)
        expected = {"step", "layer", "sample", "median", "ratio"}
        if not expected <= set(frame.columns):
            raise ValueError(f"{path} is not a RatioMonitor history: columns {list(frame.columns)}")
        saved = frame.attrs.get("massact")  # None for histories saved before it was recorded
        if saved is not None and saved != self.token_selection:
            raise ValueError(
                f"{path} counted other tokens ({saved}) than this monitor "
                f"({self.token_selection}): use the same probe batch and skip_first, or a new "
                "history file"
            )
        frame.attrs = {}
        if up_to is not None:
            frame = frame[frame["step"] <= up_to].reset_index(drop=True)
        self._frames = [frame] if len(frame) else []
        self._steps = {int(s) for s in frame["step"].unique()}


class RatioMonitorCallback(TrainerCallback):
    """Hugging Face `Trainer` callback: a `RatioMonitor` probed at step 0 and every N steps.

    >>> cb = RatioMonitorCallback(probe_ids, every=200, log=True)
    >>> Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()
    >>> cb.history            # step, layer, sample, top1..top3, median, ratio

    probe, every, k, backend, layers, skip_first: as for `RatioMonitor` (a padded probe
    counts only its real tokens).

    With `log=True` the mean ratio of each layer is logged at each probe as
    `massact/ratio_layer<l>` (`massact/ratio_<stack>_layer<l>` for encoder-decoder models)
    through the Trainer's logging path: appended to `state.log_history` and sent to every
    callback's `on_log`, so each `report_to` integration (TensorBoard, W&B, ...) receives it
    (TensorBoard shows it as `train/massact/ratio_layer<l>`). The Trainer's callback handler is
    the one that calls this callback; `attach(trainer)` names it explicitly where it cannot be
    found (a loop that calls the callback through something else).

    The history is saved with every Trainer checkpoint (`ratio_monitor.parquet` in the
    checkpoint folder) and restored when training resumes from one, so `history` covers the
    whole run after `trainer.train(resume_from_checkpoint=...)`.
    """

    HISTORY_FILE = "ratio_monitor.parquet"

    def __init__(
        self,
        probe: torch.Tensor | Mapping[str, Any],
        every: int = 100,
        *,
        k: int = 3,
        backend: str = "auto",
        layers: Sequence[int | str] | None = None,
        skip_first: int = 0,
        log: bool = False,
    ):
        self.monitor = RatioMonitor(
            probe, every, k=k, backend=backend, layers=layers, skip_first=skip_first
        )
        self.log = log
        self._handler: Any = None
        self._warned_no_handler = False

    @property
    def history(self) -> pd.DataFrame:
        """The monitor's rows: step, layer, sample, top1..topk, median, ratio."""
        return self.monitor.history

    def ratios(self) -> pd.DataFrame:
        """Mean top1/median over the probe samples: index step, one column per layer."""
        return self.monitor.ratios()

    def attach(self, trainer: Any) -> RatioMonitorCallback:
        """Send the logged ratios to `trainer`'s callbacks (a Trainer or a CallbackHandler)."""
        self._handler = getattr(trainer, "callback_handler", trainer)
        if not callable(getattr(self._handler, "on_log", None)):
            raise TypeError(
                f"attach expects a Trainer or a CallbackHandler, got {type(trainer).__name__}"
            )
        return self

    def _probe(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None) -> None:
        if model is None:
            return
        step = int(state.global_step)
        if self.monitor.maybe_record(step, model) and self.log:
            self._log(args, state, control, step, self._log_entry(step))

    def _log_entry(self, step: int) -> dict[str, float]:
        rows = self.monitor.history
        rows = rows[rows["step"] == step]
        if "stack" in rows.columns:
            means = rows.groupby(["stack", "layer"], sort=False)["ratio"].mean()
            return {f"massact/ratio_{s}_layer{int(l)}": float(r) for (s, l), r in means.items()}
        means = rows.groupby("layer")["ratio"].mean()
        return {f"massact/ratio_layer{int(l)}": float(r) for l, r in means.items()}

    def _log(self, args: Any, state: Any, control: Any, step: int, entry: dict) -> None:
        """What `Trainer.log` does: log history, then every callback's `on_log`."""
        state.log_history.append({**entry, "step": step})
        handler = self._handler if self._handler is not None else _calling_handler()
        if handler is None:
            if not self._warned_no_handler:
                self._warned_no_handler = True
                warnings.warn(
                    "RatioMonitorCallback: no Trainer callback handler found, so the ratios go "
                    "to state.log_history only (no report_to integration sees them); call "
                    "callback.attach(trainer) to send them to the Trainer's callbacks",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        # CallbackHandler.on_log clears should_log (it marks the Trainer's log as done); the
        # Trainer's own log of this step, if due, must still happen
        should_log = getattr(control, "should_log", False)
        handler.on_log(args, state, control, dict(entry))
        if control is not None:
            control.should_log = should_log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:
            self._restore(args, state)
        self._probe(args, state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._probe(args, state, control, model)

    def on_save(self, args, state, control, **kwargs):
        if not getattr(state, "is_world_process_zero", True):
            return
        folder = _checkpoint_folder(args, state)
        if folder is not None and os.path.isdir(folder):
            self.monitor.save(os.path.join(folder, self.HISTORY_FILE))

    def _restore(self, args: Any, state: Any) -> None:
        """Resuming at step N: the history becomes the one saved in the checkpoint resumed
        from (the folder given to `train(resume_from_checkpoint=...)`, else checkpoint-N)."""
        candidates = [_resume_folder(), getattr(args, "resume_from_checkpoint", None)]
        candidates.append(_checkpoint_folder(args, state))
        folders = [c for c in candidates if isinstance(c, (str, os.PathLike))]
        for folder in folders:
            path = os.path.join(folder, self.HISTORY_FILE)
            if os.path.isfile(path):
                self.monitor.load(path, up_to=int(state.global_step))
                return
        warnings.warn(
            f"RatioMonitorCallback: training resumes at step {state.global_step} but no monitor "
            f"history was found in {' or '.join(map(str, folders)) or 'a checkpoint folder'}; "
            "the history restarts at this step (load a saved one with "
            "callback.monitor.load(path))",
            RuntimeWarning,
            stacklevel=3,
        )


def _checkpoint_folder(args: Any, state: Any) -> str | None:
    """The Trainer's folder for the checkpoint of the current step (`checkpoint-<step>`)."""
    output_dir = getattr(args, "output_dir", None)
    if not output_dir:
        return None
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


# Callbacks are handed neither the Trainer nor its CallbackHandler, yet `Trainer.log` (the
# handler's on_log) is the one path that reaches every reporting integration, and the folder a
# run resumes from is known only to `Trainer.train`. Both are found on the call stack, where
# the handler's `call_event` invokes this callback inside the Trainer's training loop; only
# instances of transformers' own classes are taken, and None is the answer elsewhere.
def _on_stack(pick: Callable[[Any, Any], Any], depth: int = 16) -> Any:
    frame = sys._getframe(2)
    while frame is not None and depth > 0:
        found = pick(frame.f_locals.get("self"), frame.f_locals)
        if found is not None:
            return found
        frame, depth = frame.f_back, depth - 1
    return None


def _calling_handler() -> Any:
    """The transformers CallbackHandler whose event is running this callback, if any."""
    return _on_stack(lambda owner, _: owner if isinstance(owner, CallbackHandler) else None)


def _resume_folder() -> str | None:
    """The checkpoint folder the running `Trainer.train` resumes from, if any."""
    from transformers import Trainer

    def pick(owner: Any, local: Any) -> Any:
        path = local.get("resume_from_checkpoint") if isinstance(owner, Trainer) else None
        return path if isinstance(path, str) else None

    return _on_stack(pick)


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _check_probe_mask(probe: Mapping[str, Any]) -> None:
    """A probe's attention mask is a 2D [batch, seq] padding mask shaped like its input ids."""
    mask = probe.get("attention_mask")
    if mask is None:
        return
    mask = padding_mask(mask, "the probe's attention_mask")
    ids = probe.get("input_ids")
    if isinstance(ids, torch.Tensor) and tuple(ids.shape) != tuple(mask.shape):
        raise ValueError(
            f"the probe's attention_mask {list(mask.shape)} and input_ids {list(ids.shape)} "
            "differ in shape: give one mask entry per token"
        )
