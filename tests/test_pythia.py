"""Pythia sweeps on tiny random GPTNeoX checkpoints saved in a temp dir (no network).

Each "step" folder is a real save_pretrained folder (config, safetensors, tokenizer files), so
the real loading, hashing, tokenising and dataset-writing code runs, with HF_HUB_OFFLINE=1.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _cases import ref_stats
from _checkpoints import WORDS, save_checkpoint, write_corpus
from _checkpoints import word_tokenizer as tokenizer
from _models import layer_outputs, tiny_neox
from transformers import GPTNeoXForCausalLM

from massact.dataset import load_dataset, task_done
from massact.sources._pythia import (
    PAPER_MODELS,
    PYTHIA_ARCHS,
    PYTHIA_STEPS,
    _rotary,
    duplicate_flags,
    make_inputs,
    paper_steps,
    select_steps,
    sweep_pythia,
)

L, D, SEQ, NSEQ = 2, 32, 8, 3


def tiny_model(seed: int) -> GPTNeoXForCausalLM:
    return tiny_neox(
        seed,
        vocab_size=len(WORDS) + 2,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=4,  # the H the architectures table must report
        max_position_embeddings=64,  # seq_len 65 "exceeds"
        rotary_pct=0.25,
    )


@pytest.fixture
def pythia_root(tmp_path, monkeypatch):
    """<tmp>/local/pythia-tiny/step{0,1,2,4}; step4 has step2's weights (a bad branch)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "local"
    for step, seed in [(0, 0), (1, 1), (2, 2), (4, 2)]:
        save_checkpoint(root / "pythia-tiny" / f"step{step}", tiny_model(seed))
    return root, write_corpus(tmp_path / "corpus.txt")


def reference_stats(folder, input_ids) -> tuple[np.ndarray, np.ndarray]:
    """[L, n] top1 and median of each layer output, with plain hooks and pure torch."""
    model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
    out = [ref_stats(h, 1) for h in layer_outputs(model, input_ids)]
    top = torch.stack([top[..., 0] for top, _ in out]).double().numpy()
    med = torch.stack([med for _, med in out]).double().numpy()
    return top, med


def test_schedule_and_architectures():
    assert len(PYTHIA_STEPS) == 154 and PYTHIA_STEPS[:12] == (
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1000,
    )
    assert PYTHIA_STEPS[-1] == 143000 and all(a < b for a, b in zip(PYTHIA_STEPS, PYTHIA_STEPS[1:]))
    assert sum(PYTHIA_ARCHS[m].L for m in PAPER_MODELS) == 188  # the paper's 188 layers
    assert PYTHIA_ARCHS["1.4b"].d_ff == 4 * 2048 and PYTHIA_ARCHS["12b"].H == 40
    steps = paper_steps()
    assert len(steps) == 37 and steps[0] == 0 and steps[-1] == 143000
    assert set(steps) <= set(PYTHIA_STEPS) and steps == sorted(set(steps))
    assert np.ptp(np.diff(steps[1:])) <= 1000  # regularly spaced up to the 1000-step grid
    assert paper_steps("pythia-1b") == steps and len(paper_steps(10)) == 10
    every = select_steps(20)
    assert every[0] == 0 and every[-1] == 143000 and every[1] == PYTHIA_STEPS[20]
    assert select_steps("all") == list(PYTHIA_STEPS) and select_steps([2, 0]) == [0, 2]
    with pytest.raises(ValueError, match="not Pythia checkpoints"):
        select_steps([3])
    with pytest.raises(ValueError, match="unknown Pythia size"):
        paper_steps("7b")


def test_rotary_from_v4_fields_and_v5_rope_parameters():
    cfg = tiny_model(0).config
    assert _rotary(cfg) == (0.25, 10000.0)

    class V4:  # a v4-style config object
        rotary_pct, rotary_emb_base = 0.5, 500.0

    class V5:
        rope_parameters = {"partial_rotary_factor": 0.125, "rope_theta": 20000.0}

    assert _rotary(V4()) == (0.5, 500.0) and _rotary(V5()) == (0.125, 20000.0)


def test_duplicate_flags_mark_all_but_the_highest_step():
    flags = duplicate_flags({0: {"a"}, 1000: {"b", "s1"}, 2000: {"c"}, 143000: {"s1", "s2"}})
    assert flags == {0: "", 1000: "step143000", 2000: "", 143000: ""}


def test_inputs_are_seeded_windows_of_the_token_stream(pythia_root):
    _, corpus = pythia_root
    tok = tokenizer()
    a = make_inputs(tok, corpus, n_seqs=4, seq_len=SEQ, seed=1)
    assert a.shape == (4, SEQ) and a.dtype == torch.int64
    assert torch.equal(a, make_inputs(tok, corpus, n_seqs=4, seq_len=SEQ, seed=1))
    assert not torch.equal(a, make_inputs(tok, corpus, n_seqs=4, seq_len=SEQ, seed=2))
    stream = []
    for line in corpus.read_text().splitlines():
        stream += tok(line, add_special_tokens=False)["input_ids"]
    assert 0 in a or set(a.flatten().tolist()) <= set(stream)  # EOS (0) or corpus tokens
    with pytest.raises(ValueError, match="more text"):
        make_inputs(tok, ["w1 w2"], n_seqs=2, seq_len=SEQ)
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_inputs(tok, corpus.parent / "missing.txt")


def test_sweep_local_checkpoints_offline(pythia_root, tmp_path):
    root, corpus = pythia_root
    out = tmp_path / "ds"
    sweep_pythia(
        ["tiny"], [0, 1, 2, 4], out, text=corpus, n_seqs=NSEQ, seq_len=SEQ, seed=3, local_root=root
    )
    ds = load_dataset(out)
    st = ds.stats
    assert set(st["model"]) == {"pythia-tiny"} and set(st["suite"]) == {"pythia"}
    assert len(st) == 4 * L * NSEQ
    prov = ds.provenance.set_index("step").sort_index()
    assert list(prov.index) == [0, 1, 2, 4]
    assert set(prov["source"]) == {"pythia"} and list(prov["revision"]) == [
        "step0",
        "step1",
        "step2",
        "step4",
    ]
    assert set(prov["commit"]) == {""}  # local folders have no Hub commit
    assert prov["input_sha256"].nunique() == 1 and len(prov["input_sha256"].iloc[0]) == 64
    # step4 serves step2's weights: step2 is flagged as a duplicate of the higher step
    assert prov.loc[2, "weights_sha256"] == prov.loc[4, "weights_sha256"]
    assert prov["weights_sha256"].nunique() == 3
    assert list(prov["duplicate_of"]) == ["", "", "step4", ""]
    assert list(json.loads(prov.loc[0, "weight_files"])) == ["model.safetensors"]
    task = pd.read_parquet(out / "stats" / "pythia-tiny" / "step2.parquet")
    assert set(task["duplicate_of"]) == {"step4"} and set(task["revision"]) == {"step2"}
    arch = ds.architectures.set_index("model").loc["pythia-tiny"]
    assert (arch["L"], arch["d"], arch["H"], arch["d_ff"]) == (L, D, 4, 4 * D)
    assert arch["rotary_pct"] == 0.25 and arch["rotary_base"] == 10000.0
    assert arch["n_params"] == sum(p.numel() for p in tiny_model(0).parameters())
    assert arch["max_step"] == 4
    # the numbers are those of the layer outputs on the same seeded inputs
    ids = make_inputs(tokenizer(), corpus, n_seqs=NSEQ, seq_len=SEQ, seed=3)
    top, med = reference_stats(root / "pythia-tiny" / "step1", ids)
    got = st[st["step"] == 1].sort_values(["layer", "sample"])
    assert np.array_equal(got["top1"].to_numpy(), top.ravel())
    assert np.array_equal(got["median"].to_numpy(), med.ravel())
    assert np.array_equal(got["ratio"].to_numpy(), top.ravel() / med.ravel())
    assert (st["top1"] >= st["top2"]).all() and (st["top2"] >= st["top3"]).all()


def test_resume_skips_finished_tasks_and_matches_one_run(pythia_root, tmp_path):
    root, corpus = pythia_root
    kw = dict(text=corpus, n_seqs=NSEQ, seq_len=SEQ, local_root=root)
    once = tmp_path / "once"
    sweep_pythia("tiny", [0, 2, 4], once, **kw)
    parts = tmp_path / "parts"
    sweep_pythia("tiny", [4], parts, **kw)  # the high step first: step2 is re-flagged later
    sweep_pythia("tiny", [0, 2], parts, **kw)
    before = {p: p.stat().st_mtime_ns for p in (parts / "stats").rglob("*.parquet")}
    sweep_pythia("tiny", [0, 2, 4], parts, **kw)  # all done: nothing rewritten
    assert before == {p: p.stat().st_mtime_ns for p in (parts / "stats").rglob("*.parquet")}
    assert task_done(parts, "pythia-tiny", 4) and not task_done(parts, "pythia-tiny", 1)

    def frame(path):
        return (
            load_dataset(path).stats.sort_values(["step", "layer", "sample"]).reset_index(drop=True)
        )

    pd.testing.assert_frame_equal(frame(once), frame(parts))


def test_errors_for_missing_paths_and_offline_hub(pythia_root, tmp_path):
    root, corpus = pythia_root
    out = tmp_path / "ds"
    with pytest.raises(FileNotFoundError, match="no checkpoint for pythia-tiny step 8"):
        sweep_pythia(["tiny"], [8], out, text=corpus, n_seqs=1, seq_len=SEQ, local_root=root)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        sweep_pythia(["tiny"], [0], out, text=corpus, local_root=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown Pythia size"):
        sweep_pythia(["tiny"], [0], out, text=corpus)
    # HF_HUB_OFFLINE=1 and an empty cache: a clear error, no network
    with pytest.raises(RuntimeError, match="not in the local Hugging Face cache"):
        sweep_pythia(["14m"], [0], out, text=corpus, cache_dir=tmp_path / "empty_cache")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        sweep_pythia(
            ["tiny"], [0], out, text="someone/some-dataset", n_seqs=1, seq_len=SEQ, local_root=root
        )
    with pytest.raises(ValueError, match="dtype"):
        sweep_pythia(
            ["tiny"], [0], out, text=corpus, n_seqs=1, seq_len=SEQ, local_root=root, dtype="int8"
        )


def test_folder_of_jsonl_and_text_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    rows = [{"text": " ".join(WORDS[i : i + 10]), "meta": {}} for i in range(0, 50, 10)]
    (folder / "sub" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "b.txt").write_text(" ".join(WORDS[:30]))
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    tok = tokenizer()
    # 30 + 50 words + 6 EOS = 86 tokens: all 10 windows of 8 drawn, so every token is seen
    ids = make_inputs(tok, folder, n_seqs=10, seq_len=SEQ, pool_factor=100)
    assert (ids == 0).sum() >= 5  # EOS between documents: 1 text file + 5 JSON lines
    assert 1 not in ids  # no unknown token: JSON syntax parsed away, the .bin file not read
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        make_inputs(tok, tmp_path / "empty", n_seqs=1)


def test_other_sources_in_the_same_root_are_not_flagged(pythia_root, tmp_path):
    from massact.dataset import write_task

    root, corpus = pythia_root
    out = tmp_path / "ds"
    frame = pd.DataFrame(
        {
            "suite": "pythia",
            "model": "pythia-tiny",
            "step": 100,
            "layer": [0, 1],
            "sample": 0,
            "top1": 5.0,
            "median": 1.0,
        }
    )
    for step in (100, 200):  # archive tasks carry no weight hashes
        write_task(out, frame.assign(step=step), {"source": "archive", "revision": f"step{step}"})
    sweep_pythia("tiny", [0, 1], out, text=corpus, n_seqs=NSEQ, seq_len=SEQ, local_root=root)
    prov = load_dataset(out).provenance.set_index("step")
    assert list(prov["duplicate_of"]) == ["", "", "", ""]
    assert list(prov["source"]) == ["pythia", "pythia", "archive", "archive"]


def test_missing_tokenizer_and_too_long_sequences(pythia_root, tmp_path):
    root, corpus = pythia_root
    bare = tmp_path / "bare"
    tiny_model(0).save_pretrained(bare / "pythia-tiny" / "step0")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        sweep_pythia(
            "tiny", [0], tmp_path / "ds", text=corpus, n_seqs=1, seq_len=SEQ, local_root=bare
        )
    with pytest.raises(ValueError, match="exceeds"):
        sweep_pythia(
            "tiny", [0], tmp_path / "ds", text=corpus, n_seqs=1, seq_len=65, local_root=root
        )


def test_hub_cache_snapshot_offline(pythia_root, tmp_path):
    """A Hub cache laid out as huggingface_hub writes it: refs/<rev> -> commit, snapshot links
    into blobs/<sha256>. The real snapshot_download(local_files_only) path finds it offline."""
    import hashlib
    import shutil

    root, corpus = pythia_root
    repo = tmp_path / "cache" / "models--EleutherAI--pythia-14m"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    shutil.copytree(root / "pythia-tiny" / "step1", snap)
    weights = snap / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    (repo / "blobs").mkdir()
    weights.rename(repo / "blobs" / sha)
    weights.symlink_to(f"../../blobs/{sha}")
    (repo / "refs").mkdir()
    (repo / "refs" / "step1000").write_text(commit)
    out = tmp_path / "ds"
    sweep_pythia(
        "EleutherAI/pythia-14m",
        [1000],
        out,
        text=corpus,
        n_seqs=NSEQ,
        seq_len=SEQ,
        cache_dir=tmp_path / "cache",
    )
    ds = load_dataset(out)
    prov = ds.provenance.iloc[0]
    assert (prov["model"], prov["step"], prov["revision"]) == ("pythia-14m", 1000, "step1000")
    assert prov["commit"] == commit
    assert json.loads(prov["weight_files"]) == {"model.safetensors": sha}
    assert ds.architectures.iloc[0]["max_step"] == 143000
    local = tmp_path / "local_ds"
    sweep_pythia("tiny", [1], local, text=corpus, n_seqs=NSEQ, seq_len=SEQ, local_root=root)
    # same weights and inputs, read from the cache or from a folder: the same statistics
    a, b = ds.stats, load_dataset(local).stats
    assert np.array_equal(a["ratio"].to_numpy(), b["ratio"].to_numpy())
    assert prov["weights_sha256"] == load_dataset(local).provenance.iloc[0]["weights_sha256"]


def test_each_task_is_written_once_with_its_final_flags(pythia_root, tmp_path, monkeypatch):
    """Weight hashes of every step are read before any task runs: step 2 (a twin of step 4)
    is written once, already flagged; per-model steps as a mapping (the pipeline's call)."""
    import massact.sources._hf_suite as hf_suite

    root, corpus = pythia_root
    writes = []
    real = hf_suite.write_task

    def counted(out, frame, provenance):
        writes.append((int(frame["step"].iat[0]), provenance["duplicate_of"]))
        return real(out, frame, provenance)

    monkeypatch.setattr(hf_suite, "write_task", counted)
    out = tmp_path / "ds"
    kw = dict(text=corpus, n_seqs=NSEQ, seq_len=SEQ, local_root=root, progress=False)
    sweep_pythia(["tiny"], {"tiny": [0, 2, 4]}, out, **kw)
    assert sorted(writes) == [(0, ""), (2, "step4"), (4, "")]
    with pytest.raises(ValueError, match="no entry for model"):
        sweep_pythia(["tiny"], {"70m": [0]}, out, **kw)
