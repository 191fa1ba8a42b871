"""Any checkpointed Hugging Face suite: revision names -> steps, AutoConfig architecture rows
(GQA, MoE), integrity records from a Hub cache, failures named per task, the command line.

Checkpoints are save_pretrained folders of tiny random GPTNeoX / Llama models (no network); the
Hub's metadata API is replaced by a fake where the online planning is tested.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _checkpoints import VOCAB, save_checkpoint, write_corpus
from _models import tiny_llama, tiny_neox
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, MixtralConfig

import massact.sources._hf_revisions as hf_revisions
import massact.sources._pythia_checkpoints as ckpts
from massact import run as massact_run
from massact.dataset import load_dataset, task_done
from massact.sources import SweepError, sweep_hf_suite
from massact.sources._hf_revisions import parse_step, select_revisions
from massact.sources._hf_task import architecture_row, n_params_of

SEQ, NSEQ = 8, 3
NEOX_REVS = {"step0": 0, "step1000": 1, "step2000": 2}  # revision -> weight seed
OLMO_REVS = {"stage1-step0-tokens0B": 0, "stage1-step500-tokens2B": 1, "main": 2}


def neox(seed: int):
    return tiny_neox(seed, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2)


def llama(seed: int):
    return tiny_llama(seed, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3)


@pytest.fixture
def suites(tmp_path, monkeypatch):
    """<tmp>/local/{neox-tiny/step*, llama-tiny/stage1-step*-tokens*B, llama-tiny/main}."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "local"
    for rev, seed in NEOX_REVS.items():
        save_checkpoint(root / "neox-tiny" / rev, neox(seed))
    for rev, seed in OLMO_REVS.items():
        save_checkpoint(root / "llama-tiny" / rev, llama(seed))
    return root, write_corpus(tmp_path / "corpus.txt")


def _kw(root, corpus) -> dict:
    return dict(text=corpus, n_seqs=NSEQ, seq_len=SEQ, seed=1, local_root=root, progress=False)


def test_steps_from_revision_names():
    assert parse_step("step1000") == 1000 and parse_step("step-7") == 7
    assert parse_step("stage1-step1000-tokens4B") == 1000  # OLMo: not stage1's 1
    assert parse_step("stage2-ingredient3-step11931-tokens50B") == 11931
    assert parse_step("ckpt_100") == 100 and parse_step("iter_0005000") == 5000
    assert parse_step("main") is None and parse_step("steps") is None
    assert parse_step("rev-42-final", r"rev-(\d+)") == 42
    revs = ["main", "step0", "step1000", "step2000", "step3000", "step4000"]
    listing = lambda: revs  # noqa: E731
    chosen, top = select_revisions("all", listing)
    assert [s for s, _ in chosen] == [0, 1000, 2000, 3000, 4000] and top == 4000
    chosen, _ = select_revisions("every:3", listing)
    assert chosen == [(0, "step0"), (3000, "step3000"), (4000, "step4000")]  # ends at the last
    chosen, top = select_revisions("step2000, 0", listing)  # a name and a step
    assert chosen == [(0, "step0"), (2000, "step2000")] and top == 4000
    chosen, top = select_revisions(["ckpt_5"], lambda: pytest.fail("no listing needed"))
    assert chosen == [(5, "ckpt_5")] and top is None
    with pytest.raises(ValueError, match="both give step 1000"):
        select_revisions("all", lambda: ["step1000", "stage2-step1000-tokens9B"])
    with pytest.raises(ValueError, match="no revision gives step 5"):
        select_revisions("5", listing)
    with pytest.raises(ValueError, match="names no step"):
        select_revisions("main", listing)
    with pytest.raises(ValueError, match="group of digits"):
        select_revisions("all", listing, pattern="step")


def test_architecture_rows_from_autoconfig():
    neox_cfg = GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, rotary_pct=0.25,
    )  # fmt: skip
    row = architecture_row("pythia", "m", neox_cfg, n_params_of(neox_cfg), 10)
    pythia_columns = ["suite", "model", "L", "d", "H", "d_ff", "rotary_pct", "rotary_base",
                      "n_params", "max_step", "vocab_size", "parallel_residual"]  # fmt: skip
    assert list(row) == pythia_columns  # no GQA or MoE columns in a GPTNeoX row
    assert row["n_params"] == sum(p.numel() for p in GPTNeoXForCausalLM(neox_cfg).parameters())
    assert (row["rotary_pct"], row["parallel_residual"]) == (0.25, True)
    gqa = LlamaConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, intermediate_size=96,
    )  # fmt: skip
    row = architecture_row("llama", "g", gqa, n_params_of(gqa), 10)
    assert (row["L"], row["d"], row["H"], row["H_kv"], row["head_dim"]) == (2, 64, 8, 2, 16)
    assert (row["d_ff"], row["rotary_pct"], row["parallel_residual"]) == (96, 1.0, False)
    assert "n_experts" not in row
    moe = MixtralConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    row = architecture_row("mix", "x", moe, n_params_of(moe), 10)
    assert (row["n_experts"], row["experts_per_token"], row["H_kv"]) == (4, 2, 2)
    dense = LlamaConfig(**{k: moe.to_dict()[k] for k in ("vocab_size", "hidden_size")},
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48)  # fmt: skip
    assert row["n_params"] > n_params_of(dense)  # four experts' MLPs counted


def test_sweep_of_two_suites_from_local_roots(suites, tmp_path):
    root, corpus = suites
    out = tmp_path / "ds"
    sweep_hf_suite(["EleutherAI/neox-tiny", "allenai/llama-tiny"], "all", out, **_kw(root, corpus))
    ds = load_dataset(out)
    prov = ds.provenance.set_index(["model", "step"]).sort_index()
    # "main" names no step: left out of "all"
    steps = [("llama-tiny", 0), ("llama-tiny", 500), ("neox-tiny", 0), ("neox-tiny", 1000)]
    assert list(prov.index) == [*steps, ("neox-tiny", 2000)]
    assert set(prov["source"]) == {"hf"} and set(prov["commit"]) == {""}
    assert prov.loc[("llama-tiny", 500), "revision"] == "stage1-step500-tokens2B"
    assert set(prov["repo"]) == {"EleutherAI/neox-tiny", "allenai/llama-tiny"}
    assert set(ds.stats["suite"]) == {"neox", "llama"}  # the repo name up to its first '-'
    arch = ds.architectures.set_index("model")
    assert arch.loc["llama-tiny", "H_kv"] == 2 and arch.loc["llama-tiny", "L"] == 3
    assert arch.loc["llama-tiny", "max_step"] == 500 and arch.loc["neox-tiny", "max_step"] == 2000
    assert np.isnan(arch.loc["neox-tiny", "H_kv"])  # no GQA field in a GPTNeoX config
    st = ds.stats
    assert len(st) == (2 * 3 + 3 * 2) * NSEQ  # llama 2 steps x 3 layers, neox 3 steps x 2
    # integrity: per-file sha256 of the weights as on disk
    files = json.loads(prov.loc[("neox-tiny", 1000), "weight_files"])
    on_disk = (root / "neox-tiny" / "step1000" / "model.safetensors").read_bytes()
    assert files == {"model.safetensors": hashlib.sha256(on_disk).hexdigest()}


def _hub_cache(cache: Path, repo: str, revisions: dict[str, Path]) -> dict[str, str]:
    """A Hub cache as huggingface_hub lays it out: refs/<rev> -> commit, snapshot files
    linking into blobs/<sha256>. Returns revision -> commit."""
    base = cache / f"models--{repo.replace('/', '--')}"
    commits = {}
    for rev, folder in revisions.items():
        commit = hashlib.sha1(f"{repo}@{rev}".encode()).hexdigest()
        snap = base / "snapshots" / commit
        shutil.copytree(folder, snap)
        for weights in snap.glob("*.safetensors"):
            sha = hashlib.sha256(weights.read_bytes()).hexdigest()
            (base / "blobs").mkdir(parents=True, exist_ok=True)
            weights.replace(base / "blobs" / sha)
            weights.symlink_to(f"../../blobs/{sha}")
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / rev).write_text(commit)
        commits[rev] = commit
    return commits


def test_hub_cache_offline_records_commits_and_duplicates(suites, tmp_path):
    """HF_HUB_OFFLINE: revisions listed from the cache's refs; commit, weight sha256 from the
    blob names; ckpt_20 serves ckpt_30's weights (a bad branch): flagged duplicate_of."""
    root, corpus = suites
    src = root / "llama-tiny"
    revs = {"ckpt_10": src / "stage1-step0-tokens0B", "ckpt_20": src / "main",
            "ckpt_30": src / "main", "ckpt_40": src / "stage1-step500-tokens2B"}  # fmt: skip
    commits = _hub_cache(tmp_path / "cache", "LLM360/amber-tiny", revs)
    out = tmp_path / "ds"
    kw = {**_kw(None, corpus), "cache_dir": tmp_path / "cache"}
    sweep_hf_suite("LLM360/amber-tiny", "every:2", out, **kw)  # ckpt_10, ckpt_30, ckpt_40
    sweep_hf_suite("LLM360/amber-tiny", "ckpt_20", out, **kw)  # later: ckpt_20's twin is there
    ds = load_dataset(out)
    prov = ds.provenance.set_index("step").sort_index()
    assert list(prov.index) == [10, 20, 30, 40]
    assert list(prov["commit"]) == [commits[f"ckpt_{s}"] for s in (10, 20, 30, 40)]
    assert list(prov["duplicate_of"]) == ["", "step30", "", ""]
    assert prov.loc[20, "weights_sha256"] == prov.loc[30, "weights_sha256"]
    assert prov["weights_sha256"].nunique() == 3
    assert ds.architectures.iloc[0]["max_step"] == 40 and set(prov["suite"]) == {"amber"}
    with pytest.raises(RuntimeError, match="no revisions in the local Hugging Face cache"):
        sweep_hf_suite("LLM360/other", "all", tmp_path / "x", **kw)


def test_online_planning_reads_metadata_without_downloading(monkeypatch):
    """Online, a checkpoint is planned from the Hub's file metadata (commit, LFS sha256):
    safetensors preferred, nothing fetched; branches list the revisions."""
    sha = "ab" * 32
    siblings = [
        SimpleNamespace(rfilename="config.json", lfs=None),
        SimpleNamespace(rfilename="model.safetensors", lfs=SimpleNamespace(sha256=sha)),
        SimpleNamespace(rfilename="pytorch_model.bin", lfs=SimpleNamespace(sha256="cd" * 32)),
    ]
    calls = []

    class FakeApi:
        def model_info(self, repo, revision=None, files_metadata=False):
            calls.append((repo, revision, files_metadata))
            return SimpleNamespace(sha="f" * 40, siblings=siblings)

        def list_repo_refs(self, repo):
            names = ["main", "step0", "step20", "step10"]
            return SimpleNamespace(branches=[SimpleNamespace(name=n) for n in names])

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(ckpts, "hub_offline", lambda: False)
    monkeypatch.setattr(hf_revisions, "hub_offline", lambda: False)  # list_revisions reads it there
    ck = ckpts.hub_checkpoint("org/m", "m", 10, "step10", fetch=False)
    assert ck.folder is None and ck.commit == "f" * 40
    assert ck.weight_files == {"model.safetensors": sha} and ck.repo == "org/m"
    assert calls == [("org/m", "step10", True)]
    assert hf_revisions.list_revisions("org/m") == ["main", "step0", "step10", "step20"]


def test_weights_changed_since_planning_are_refused(suites):
    root, _ = suites
    folder = root / "neox-tiny" / "step0"
    planned = ckpts.Checkpoint("neox-tiny", 0, folder, "step0", "", {"model.safetensors": "0"})
    assert ckpts.fetch_weights(planned) == folder  # a local folder: hashed by the driver
    moved = ckpts.Checkpoint("neox-tiny", 0, folder, "step0", "c", planned.weight_files, "o/n")
    with pytest.raises(RuntimeError, match="differ from the planned"):
        ckpts.fetch_weights(moved)


def test_a_failing_task_is_named_and_the_others_complete(suites, tmp_path):
    root, corpus = suites
    broken = root / "neox-tiny" / "step1000" / "model.safetensors"
    broken.write_bytes(b"not a safetensors file")
    out = tmp_path / "ds"
    with pytest.raises(SweepError, match=r"1 of 3 tasks failed: neox-tiny/step1000: ") as err:
        sweep_hf_suite("o/neox-tiny", "all", out, **_kw(root, corpus))
    assert [f.name for f in err.value.failures] == ["neox-tiny/step1000"]
    assert task_done(out, "neox-tiny", 0) and task_done(out, "neox-tiny", 2000)
    assert not task_done(out, "neox-tiny", 1000)


def _resolve(argv, stages=massact_run.STAGES):
    return massact_run.resolve(massact_run.build_parser().parse_args(argv), stages)


def test_command_line_hf_source_and_engine_flags(suites, tmp_path):
    argv = ["--source", "hf", "--repo", "EleutherAI/neox-tiny, allenai/llama-tiny"]
    more = ["--revisions", "every:2", "--text", "t.txt", "--step-pattern", r"step(\d+)"]
    s = _resolve([*argv, *more, "--engine", "ray", "--ray-address", "auto", "--workers", "3"])
    src = s.source
    assert src.source == "hf" and src.repos == ("EleutherAI/neox-tiny", "allenai/llama-tiny")
    assert (src.revisions, src.step_pattern, src.engine) == ("every:2", r"step(\d+)", "ray")
    assert (src.ray_address, src.workers) == ("auto", 3)
    assert s.out == Path("massact_results/hf-neox-tiny")
    fast = _resolve(["--fast", "--workers", "2"]).source
    assert (fast.engine, fast.workers, fast.ray_address) == ("local", 2, None)
    bad = [
        (["--source", "hf", "--text", "t"], "needs --repo"),
        ([*argv], "needs --text"),
        (["--repo", "a/b"], "applies to --source hf"),
        ([*argv, "--text", "t", "--step-pattern", "step"], "group of digits"),
        ([*argv, "--text", "t", "--revisions", "every:0"], "every:K"),
        (["--source", "hf", "--repo", "nope", "--text", "t"], "ORG/NAME"),
        (["--fast", "--ray-address", "auto"], "goes with --engine ray"),
        (["--fast", "--workers", "0"], "--workers must be >= 1"),
        (["--source", "archive", "p", "--engine", "ray"], "apply to sweeps"),
    ]
    for args, message in bad:
        with pytest.raises(massact_run.UsageError, match=message):
            _resolve(args)
    # the extract stage end to end from the command line, local engine
    root, corpus = suites
    out = tmp_path / "cli"
    run = [*argv, "--revisions", "0", "--local-root", str(root)]  # step 0: each repo's name
    run += ["--text", str(corpus), "--n-seqs", "2", "--seq-len", str(SEQ), "--out", str(out)]
    assert massact_run.main([*run, "--no-progress"], stages=("extract",)) == 0
    ds = load_dataset(out / "dataset")
    assert sorted(zip(ds.provenance["model"], ds.provenance["revision"])) == [
        ("llama-tiny", "stage1-step0-tokens0B"), ("neox-tiny", "step0"),
    ]  # fmt: skip
    assert isinstance(ds.stats, pd.DataFrame) and set(ds.stats["sample"]) == {0, 1}
