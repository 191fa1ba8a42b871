"""The probing section of the README runs as written.

Each code block marked `<!-- snippet: name -->` is executed verbatim, in a fresh namespace and a
temporary working directory, with the Hub loaders it calls answering offline with tiny random
models: `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` / `AutoConfig` / `AutoTokenizer
.from_pretrained` and TransformerLens 4's `TransformerBridge.boot_transformers` (booted from the
tiny model object). nnsight's `TransformersModel(repo_id, dispatch=True)` loads through those
same transformers loaders; any other Hub request fails at once (huggingface_hub's offline
mode). Only the training snippet's step counts are shortened (each
replacement must match the text exactly). Then a few checks on what each snippet produced.
"""

import linecache
import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from _cases import assert_stats_equal
from _models import layer_outputs, tiny_neox
from _tiny_tools import tiny_tokenizer
from transformer_lens import TransformerBridge

from massact import reference_layer_stats, stats_of

SNIPPETS = Path(__file__).resolve().parents[1] / "README.md"
VOCAB, D, L = 64, 32, 6
# the training snippet's sizes -> a few CPU steps
SHORTER = {
    "trainer": {
        "max_steps=1000": "max_steps=4",
        "logging_steps=100": "logging_steps=2",
        "save_steps=500": "save_steps=2",
        "every=100": "every=2",
    }
}


def snippets() -> dict[str, str]:
    text = SNIPPETS.read_text()
    found = re.findall(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", text, flags=re.S)
    return dict(found)


def causal_lm(*args, **kwargs):
    return tiny_neox(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=L)


def seq2seq_lm(*args, **kwargs):
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).eval()


def config(*args, return_unused_kwargs=False, **kwargs):
    cfg = causal_lm().config
    return (cfg, {}) if return_unused_kwargs else cfg


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    boot = TransformerBridge.boot_transformers

    def boot_tiny(name, *args, **kwargs):
        return boot(name, hf_model=causal_lm(), tokenizer=tiny_tokenizer(VOCAB), device="cpu")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", causal_lm)
    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", seq2seq_lm)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer(VOCAB)
    )
    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot_tiny))
    # anything else that asks the Hub (nnsight's pipeline looks for processor files) gets an
    # immediate "offline" answer instead of a network timeout
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(name: str) -> dict:
    code = snippets()[name]
    for old, new in SHORTER.get(name, {}).items():
        assert old in code, (name, old)
        code = code.replace(old, new)
    filename = f"{SNIPPETS.name}:{name}"
    # nnsight reads a trace's `with` body back from its source: register the snippet's
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    namespace: dict = {"__name__": f"snippet_{name}"}
    exec(compile(code, filename, "exec"), namespace)
    return namespace


def test_the_section_has_its_snippets():
    assert list(snippets()) == ["hf", "t5", "padded", "tl4", "nnsight", "trainer"]


def test_hf_snippet(offline_hub):
    ns = run("hf")
    table = ns["col"].table()
    assert sorted(table["layer"].unique()) == list(range(L)) and len(table) == L
    assert ns["col"].passes[-1][5].ratio.shape == (1,)


def test_t5_snippet(offline_hub):
    ns = run("t5")
    table = ns["col"].table()
    assert list(table.columns[:3]) == ["pass", "stack", "layer"]
    assert table["stack"].tolist() == ["encoder"] * 2 + ["decoder"] * 2
    assert ns["layer_names"](ns["t5"]) == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
    assert ns["one"].layer_names == ["decoder.1"]
    assert_stats_equal(ns["one"].passes[0][0], ns["col"].passes[0][3])


def test_padded_snippet(offline_hub):
    """Left-padded: each sequence's statistics are those of its real tokens after the first,
    from the same pass's layer outputs (plain hooks) with the pads and first token cut out."""
    ns = run("padded")
    mask = ns["batch"]["attention_mask"]
    assert mask[:, 0].tolist() == [1, 0]  # the short sequence is padded, on the left
    kept = mask.bool() & (mask.cumsum(-1) > 1)
    hidden = layer_outputs(ns["model"], **ns["batch"], position_ids=ns["positions"])
    for got, h in zip(ns["col"].passes[0], hidden, strict=True):
        for b in range(2):
            where = kept[b].nonzero().flatten()
            want = reference_layer_stats(h[b][where], 3)
            assert torch.equal(got.top[b], want.top) and torch.equal(got.median[b], want.median)
            assert torch.equal(got.top_token[b], where[want.top_token])
    assert len(ns["col"].table()) == 2 * L


def test_tl4_snippet(offline_hub):
    ns = run("tl4")
    assert [name for name, _ in ns["sink"]] == ns["names"] and len(ns["names"]) == L
    for (_, st), from_blocks in zip(ns["sink"], ns["col"].passes[0], strict=True):
        assert_stats_equal(st, from_blocks)


def test_nnsight_snippet(offline_hub):
    ns = run("nnsight")
    assert len(ns["hidden"]) == L
    for got, want in zip(ns["col"].passes[0], stats_of(ns["hidden"]), strict=True):
        assert_stats_equal(got, want)


# TrainingArguments pins dataloader memory by default, which torch warns about without a GPU
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")
def test_trainer_snippet(offline_hub):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ns = run("trainer")
    assert sorted(ns["monitor"].history["step"].unique()) == [0, 2, 4]
    assert ns["monitor"].ratios().shape == (3, L)
    (events,) = offline_hub.glob("out/run/runs/*/events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    assert [s.step for s in board.Scalars(f"train/massact/ratio_layer{L - 1}")] == [0, 2, 4]
    assert (offline_hub / "out/run/checkpoint-2/ratio_monitor.parquet").is_file()
