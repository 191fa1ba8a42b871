"""Training-loop monitor: a tiny GPTNeoX trained for a few steps with the probe attached.

The callback runs inside a real Hugging Face `Trainer` (CPU, a handful of steps), and also from
a hand-written loop through transformers' CallbackHandler, TrainerState and TrainerControl. The
logged ratios are read back from the real TensorBoard writer's event file, and the history is
checked across a real resume from a Trainer checkpoint.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from _cases import ref_stats
from _models import layer_outputs, tiny_llama, tiny_neox, token_ids
from _tiny_tools import tiny_tokenizer
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

from massact import RatioMonitor, RatioMonitorCallback, reference_layer_stats

VOCAB, L, D = 64, 2, 32


def tiny_model(dropout: float = 0.0):
    """Seed 0, in train mode as built (the Trainer test records every module's flag before
    the Trainer itself calls model.train())."""
    return tiny_neox(
        vocab_size=VOCAB,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=2,
        max_position_embeddings=32,
        hidden_dropout=dropout,
        train=True,
    )


def batch(seed: int, size: int = 4, seq: int = 16) -> torch.Tensor:
    return token_ids(VOCAB, size, seq, seed)


def reference_ratio(model, probe: torch.Tensor) -> torch.Tensor:
    """[L, batch] top1/median of each layer output, by plain hooks in eval mode."""
    out = [ref_stats(h, 1) for h in layer_outputs(model, probe, eval_mode=True)]
    return torch.stack([top[..., 0] / med for top, med in out])


def test_monitor_records_every_n_steps_and_restores_mode():
    model = tiny_model(dropout=0.1)
    model.train()
    model.gpt_neox.layers[0].eval()  # a mixed train/eval state must come back as it was
    modes = [m.training for m in model.modules()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probe = batch(99, size=3)
    monitor = RatioMonitor(probe, every=3)
    expected = {}
    for step in range(7):
        opt.zero_grad()
        model(batch(step), labels=batch(step)).loss.backward()
        opt.step()
        probed = monitor.maybe_record(step, model)
        assert probed == (step % 3 == 0)
        if probed:
            expected[step] = reference_ratio(model, probe)
        assert [m.training for m in model.modules()] == modes
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not monitor.maybe_record(6, model)  # already recorded
    hist = monitor.history
    assert list(hist.columns) == [
        "step",
        "layer",
        "sample",
        "top1",
        "top2",
        "top3",
        "median",
        "ratio",
    ]
    assert sorted(hist["step"].unique()) == [0, 3, 6] and len(hist) == 3 * L * 3
    for step, ref in expected.items():
        got = hist[hist["step"] == step].sort_values(["layer", "sample"])["ratio"].to_numpy()
        assert torch.allclose(torch.tensor(got, dtype=torch.float32), ref.flatten(), rtol=1e-6)
    table = monitor.ratios()
    assert table.shape == (3, L) and list(table.index) == [0, 3, 6]
    # training changed the weights, so the probe's numbers moved
    assert not torch.allclose(expected[0], expected[6])


def test_callback_with_real_callback_handler():
    model = tiny_model()
    probe = {"input_ids": batch(5, size=2), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    cb = RatioMonitorCallback(probe, every=2, k=2, layers=[1], log=True)
    handler = CallbackHandler([cb], model, None, None, None)
    state, control = TrainerState(), TrainerControl()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    handler.on_train_begin(None, state, control)
    for step in range(1, 6):
        opt.zero_grad()
        model(batch(step), labels=batch(step)).loss.backward()
        opt.step()
        state.global_step = step
        handler.on_step_end(None, state, control)
    assert model.training
    hist = cb.history
    assert sorted(hist["step"].unique()) == [0, 2, 4]
    assert set(hist["layer"]) == {1} and list(hist.columns)[3:] == [
        "top1",
        "top2",
        "median",
        "ratio",
    ]
    logged = [e for e in state.log_history if "massact/ratio_layer1" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert logged[1]["massact/ratio_layer1"] == pytest.approx(
        hist[hist["step"] == 2]["ratio"].mean()
    )


class TokenDataset(torch.utils.data.Dataset):
    """n fixed sequences of int token ids; labels = input ids (the model shifts them)."""

    def __init__(self, n: int = 24, seq: int = 16):
        self.ids = batch(1234, size=n, seq=seq)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def hooked_reference(model, probe: torch.Tensor, k: int = 3) -> list:
    """reference_layer_stats of each decoder layer's output on `probe`, by plain hooks."""
    return [reference_layer_stats(h, k) for h in layer_outputs(model, probe, eval_mode=True)]


class ReferenceProbe(TrainerCallback):
    """Listed after the monitor: at each of its steps, records every module's training flag
    (the monitor must have restored them) and the reference statistics of the same weights."""

    def __init__(self, probe: torch.Tensor, every: int):
        self.probe, self.every = probe, every
        self.modes: dict[int, list[bool]] = {}
        self.stats: dict[int, list] = {}

    def _check(self, state, model):
        step = state.global_step
        if step % self.every == 0:
            self.modes[step] = [m.training for m in model.modules()]
            self.stats[step] = hooked_reference(model, self.probe)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._check(state, model)


def assert_matches_reference(rows, ref: list) -> None:
    """History rows of one step == reference LayerStats ([batch] per layer); selections exact."""
    rows = rows.sort_values(["layer", "sample"])
    assert list(rows["layer"]) == [l for l in range(L) for _ in range(len(ref[0].ratio))]
    for col, pick in (
        ("top1", lambda r: r.top[:, 0]),
        ("top2", lambda r: r.top[:, 1]),
        ("top3", lambda r: r.top[:, 2]),
        ("median", lambda r: r.median),
    ):
        want = torch.cat([pick(r) for r in ref]).double()
        assert torch.equal(torch.tensor(rows[col].to_numpy()), want), col
    ratio = torch.tensor(rows["ratio"].to_numpy())
    assert torch.isfinite(ratio).all() and (ratio >= 1).all()
    want = torch.cat([r.ratio for r in ref]).double()
    torch.testing.assert_close(ratio, want, rtol=1e-6, atol=0)


def test_callback_in_a_real_trainer(tmp_path):
    model = tiny_model(dropout=0.1)  # dropout: a probe left in train mode would be random
    probe = batch(77, size=3)
    monitor = RatioMonitorCallback(probe, every=2, log=True)
    reference = ReferenceProbe(probe, every=2)
    args = trainer_args(tmp_path, max_steps=6)
    trainer = Trainer(model, args, train_dataset=TokenDataset(), callbacks=[monitor, reference])
    trainer.train()

    hist = monitor.history
    assert sorted(hist["step"].unique()) == [0, 2, 4, 6]
    assert len(hist) == 4 * L * 3
    assert sorted(reference.stats) == [0, 2, 4, 6]
    for step, ref in reference.stats.items():
        assert_matches_reference(hist[hist["step"] == step], ref)
        # the Trainer trains in train mode; right after the monitor's eval-mode probe, every
        # module is back in it
        assert all(reference.modes[step]), step
    assert all(m.training for m in model.modules())
    # the weights after training are those of the last probe: a fresh probe agrees
    assert_matches_reference(hist[hist["step"] == 6], hooked_reference(model, probe))
    # training moved the weights, so the probe's numbers moved
    assert not torch.equal(
        torch.tensor(hist[hist["step"] == 0]["top1"].to_numpy()),
        torch.tensor(hist[hist["step"] == 6]["top1"].to_numpy()),
    )

    logs = trainer.state.log_history
    logged = [e for e in logs if "massact/ratio_layer0" in e]
    assert [e["step"] for e in logged] == [0, 2, 4, 6]
    for e in logged:
        rows = hist[hist["step"] == e["step"]]
        for l in range(L):
            want = rows[rows["layer"] == l]["ratio"].mean()
            assert e[f"massact/ratio_layer{l}"] == pytest.approx(want, rel=1e-12)
    # the Trainer's own logging still happens beside ours
    assert [e["step"] for e in logs if "loss" in e] == [2, 4, 6]


def test_monitor_errors():
    with pytest.raises(ValueError, match="every"):
        RatioMonitor(batch(0), every=0)
    with pytest.raises(TypeError, match="input ids"):
        RatioMonitor(torch.randn(2, 3))
    with pytest.raises(TypeError, match="mapping"):
        RatioMonitor([1, 2, 3])
    assert len(RatioMonitor(batch(0)).history) == 0


def padded_probe() -> dict:
    """A left-padded probe (a tokenizer's BatchEncoding): 16, 9 and 4 real tokens."""
    ids = batch(55, size=3)
    return tiny_tokenizer(VOCAB).pad(
        {"input_ids": [ids[0].tolist(), ids[1, :9].tolist(), ids[2, :4].tolist()]},
        padding_side="left",
        return_tensors="pt",
    )


def test_padded_probe_counts_its_real_tokens(tmp_path):
    """The probe's attention mask and skip_first decide which tokens count (exact against the
    oracle of the real rows), the history says so, and a saved history keeps it."""
    model, probe = tiny_model(), padded_probe()
    monitor = RatioMonitor(probe, every=1, skip_first=1)
    rows = monitor.record(0, model).sort_values(["layer", "sample"])
    kept = probe["attention_mask"].bool() & (probe["attention_mask"].cumsum(-1) > 1)
    for layer, h in enumerate(layer_outputs(model, **probe, eval_mode=True)):
        for b in range(3):
            want = reference_layer_stats(h[b][kept[b]], 3)
            got = rows[(rows["layer"] == layer) & (rows["sample"] == b)]
            assert got[["top1", "top2", "top3"]].to_numpy().tolist() == [want.top.tolist()]
            assert got["median"].item() == want.median.item()
    assert monitor.history.attrs["massact"] == {"skip_first": 1, "attention_mask": True}
    monitor.save(tmp_path / "h.parquet")
    again = RatioMonitor(probe, skip_first=1)
    again.load(tmp_path / "h.parquet")
    pd.testing.assert_frame_equal(again.history, monitor.history, check_exact=True)
    with pytest.raises(ValueError, match="counted other tokens"):
        RatioMonitor(probe).load(tmp_path / "h.parquet")
    with pytest.raises(ValueError, match="counted other tokens"):
        RatioMonitor(probe["input_ids"], skip_first=1).load(tmp_path / "h.parquet")
    older = monitor.history  # saved before histories said which tokens counted: accepted
    older.attrs = {}
    older.to_parquet(tmp_path / "older.parquet")
    RatioMonitor(probe).load(tmp_path / "older.parquet")
    assert RatioMonitorCallback(probe, skip_first=1).monitor.skip_first == 1


def test_padded_probe_errors():
    probe = padded_probe()
    with pytest.raises(ValueError, match="2D \\[batch, seq\\] padding mask"):
        RatioMonitor({**probe, "attention_mask": probe["attention_mask"][:, None, None]})
    with pytest.raises(ValueError, match="differ in shape"):
        RatioMonitor({**probe, "attention_mask": probe["attention_mask"][:, 1:]})
    with pytest.raises(ValueError, match="skip_first"):
        RatioMonitorCallback(probe, skip_first=-1)


def trainer_args(output_dir, **overrides) -> TrainingArguments:
    """A few CPU steps of the tiny model: batch 4, a probe every 2 steps, a log every 2."""
    fields = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return TrainingArguments(**{**fields, **overrides})


def test_ratios_reach_tensorboard(tmp_path):
    """report_to=["tensorboard"]: the real TensorBoardCallback writes the ratios (it sees them in
    on_log, as it sees the loss); read back from the event file with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = RatioMonitorCallback(batch(77, size=3), every=2, log=True)
    args = trainer_args(tmp_path, report_to=["tensorboard"])
    Trainer(tiny_model(), args, train_dataset=TokenDataset(), callbacks=[monitor]).train()

    events = sorted(tmp_path.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    hist = monitor.history
    for l in range(L):
        scalars = board.Scalars(f"train/massact/ratio_layer{l}")
        assert [s.step for s in scalars] == [0, 2, 4]
        for s in scalars:
            mean = hist[(hist["step"] == s.step) & (hist["layer"] == l)]["ratio"].mean()
            assert s.value == float(np.float32(mean))  # TensorBoard stores float32 scalars
    # the Trainer's own scalars are still written, at their own steps
    assert [s.step for s in board.Scalars("train/loss")] == [2, 4]


def resumable_model():
    return tiny_llama(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L, train=True)


def test_history_survives_resume(tmp_path):
    """Checkpoints carry the monitor's history; a new process (new model, new callback) that
    resumes from one ends with the same history as the uninterrupted run, to the bit.

    A Llama: transformers 5.24's Trainer resume does not restore GPTNeoX's output embedding
    (the checkpoint's `embed_out.weight` is reported unexpected and `lm_head.weight` missing), so
    a resumed GPTNeoX does not continue the same run."""
    probe = batch(77, size=3)
    saving = dict(max_steps=6, save_strategy="steps", save_steps=4)

    full = RatioMonitorCallback(probe, every=2, log=True)
    Trainer(
        resumable_model(),
        trainer_args(tmp_path / "a", **saving),
        train_dataset=TokenDataset(),
        callbacks=[full],
    ).train()
    assert sorted(full.history["step"].unique()) == [0, 2, 4, 6]
    saved = pd.read_parquet(tmp_path / "a" / "checkpoint-4" / RatioMonitorCallback.HISTORY_FILE)
    assert sorted(saved["step"].unique()) == [0, 2, 4]

    # resumed from a checkpoint outside the new run's output_dir
    resumed = RatioMonitorCallback(probe, every=2, log=True)
    trainer = Trainer(
        resumable_model(),
        trainer_args(tmp_path / "b", **saving),
        train_dataset=TokenDataset(),
        callbacks=[resumed],
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    pd.testing.assert_frame_equal(resumed.history, full.history, check_exact=True)
    logged = [e["step"] for e in trainer.state.log_history if "massact/ratio_layer0" in e]
    assert logged == [0, 2, 4, 6]  # the restored TrainerState's entries, then step 6

    # resume_from_checkpoint=True: the last checkpoint of output_dir (step 6, nothing to train)
    again = RatioMonitorCallback(probe, every=2)
    Trainer(
        resumable_model(),
        trainer_args(tmp_path / "a", **saving),
        train_dataset=TokenDataset(),
        callbacks=[again],
    ).train(resume_from_checkpoint=True)
    pd.testing.assert_frame_equal(again.history, full.history, check_exact=True)


def test_resume_without_saved_history_warns(tmp_path):
    plain = trainer_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    Trainer(tiny_model(), plain, train_dataset=TokenDataset()).train()
    monitor = RatioMonitorCallback(batch(77, size=3), every=2)
    trainer = Trainer(tiny_model(), plain, train_dataset=TokenDataset(), callbacks=[monitor])
    with pytest.warns(RuntimeWarning, match="no monitor history was found"):
        trainer.train(resume_from_checkpoint=True)
    assert sorted(monitor.history["step"].unique()) == [2]  # restarts at the resumed step


def test_ratios_reach_other_callbacks_outside_a_handler():
    """Called directly (no CallbackHandler on the stack), the callback warns once that only
    state.log_history gets the ratios; attach(handler) sends them to every callback's on_log."""

    class Recorder(TrainerCallback):
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append((state.global_step, dict(logs)))

    model, recorder = tiny_model(), Recorder()
    cb = RatioMonitorCallback(batch(5, size=2), every=1, layers=[0], log=True)
    handler = CallbackHandler([recorder, cb], model, None, None, None)
    state, control = TrainerState(), TrainerControl()
    with pytest.warns(RuntimeWarning, match="no Trainer callback handler found"):
        cb.on_train_begin(None, state, control, model=model)
    state.global_step = 1
    cb.on_step_end(None, state, control, model=model)  # warned once only
    assert recorder.logs == [] and [e["step"] for e in state.log_history] == [0, 1]
    control.should_log = True  # the Trainer's own log of this step is still due afterwards
    state.global_step = 2
    cb.attach(handler).on_step_end(None, state, control, model=model)
    assert [step for step, _ in recorder.logs] == [2] and control.should_log
    assert list(recorder.logs[0][1]) == ["massact/ratio_layer0"]
    with pytest.raises(TypeError, match="Trainer or a CallbackHandler"):
        cb.attach(object())
