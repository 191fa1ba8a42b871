"""Training-loop monitor: a tiny GPTNeoX trained for a few steps with the probe attached.

The Trainer itself needs `accelerate` (not installed here), so the callback is driven by
transformers' real CallbackHandler, TrainerState and TrainerControl from a hand-written loop.
"""

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

from massact import RatioMonitor, RatioMonitorCallback
from massact._probe import decoder_layers

VOCAB, L, D = 64, 2, 32


def tiny_model(dropout: float = 0.0) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=2,
        intermediate_size=4 * D,
        max_position_embeddings=32,
        hidden_dropout=dropout,
    )
    return GPTNeoXForCausalLM(cfg)


def batch(seed: int, size: int = 4, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (size, seq), generator=torch.Generator().manual_seed(seed))


def reference_ratio(model, probe: torch.Tensor) -> torch.Tensor:
    """[L, batch] top1/median of each layer output, by plain hooks in eval mode."""
    out = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o: out.append(o.abs().flatten(-2)))
        for layer in decoder_layers(model)
    ]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(probe)
    for m, mode in modes:
        m.training = mode
    for h in hooks:
        h.remove()
    return torch.stack([a.max(-1).values / a.median(-1).values for a in out])


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


def test_monitor_errors():
    with pytest.raises(ValueError, match="every"):
        RatioMonitor(batch(0), every=0)
    with pytest.raises(TypeError, match="input ids"):
        RatioMonitor(torch.randn(2, 3))
    with pytest.raises(TypeError, match="mapping"):
        RatioMonitor([1, 2, 3])
    assert len(RatioMonitor(batch(0)).history) == 0
