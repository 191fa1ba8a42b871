"""Rounds until convergence (issue 11): curves that have not met the stopping rule after the
first round go on, compacted, until they converge; statuses say what the local model allows;
bad input is a named error.

The oracle is the paper's scipy recipe: every curve must reach SSE <= SSE_scipy (1 + 1e-6) +
1e-12 SST. Curves are padded to N_COLS (tests/test_fit.py's bucket) and batches stay <= 64
curves, so the compiled functions are shared with that file.
"""

import dataclasses

import numpy as np
import pytest

from massact.curves import CORPUS_SETS, FitSettings, corpus_curves
from massact.curves._chunks import round_rows
from massact.curves._fit import fit_trajectories
from massact.curves._result import (
    MODEL_MARGIN,
    STOP_ATOL,
    STOP_RTOL,
    TOL_ATOL,
    TOL_RTOL,
    FitStatus,
)
from massact.curves._scipy_recipe import reference_fit_batch

N_COLS = 55
FIELDS = ("params", "reparam", "sse", "cov", "stderr", "n_iter", "status", "sse_drop")


def _padded(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pad = ((0, 0), (0, N_COLS - d["t"].shape[1]))
    return np.pad(d["t"], pad), np.pad(d["y"], pad), np.pad(d["mask"], pad)


def _sst(y, mask):
    yy = np.where(mask, y, np.nan)
    return np.nansum((yy - np.nanmean(yy, 1, keepdims=True)) ** 2, 1)


def _first_and_full(name: str, seed: int):
    t, y, m = _padded(corpus_curves(name, 64, seed=seed, n_points=(26, N_COLS)))
    return (t, y, m), fit_trajectories(t, y, m, max_rounds=1), fit_trajectories(t, y, m)


@pytest.fixture(scope="module")
def issue_set():
    """64 curves like the issue's (1-5% multiplicative noise, magnitudes 5-3,000, half early
    peaks with large lam and gamma, half log increases), 26-55 checkpoints. Three of them
    (rows 24, 30, 62) stopped 1e-5 to 3e-4 above scipy's SSE after one round (measured)."""
    return _first_and_full("pythia_mix", 2)


@pytest.fixture(scope="module")
def outlier_set():
    """64 curves with 1-3 outliers each: after one round 12 stop at MAX_ITERATIONS and 13 at
    NOT_CONVERGED (measured)."""
    return _first_and_full("outliers", 1)


def test_later_rounds_reach_scipys_sse_where_the_first_round_stopped_short(issue_set):
    (t, y, m), first, full = issue_set
    ref = reference_fit_batch(t, y, m)
    bound = ref["sse"] * (1 + 1e-6) + 1e-12 * ref["sst"]
    short = np.flatnonzero(first.sse > bound)
    assert short.size >= 2, "the regression needs curves the first round leaves short"
    assert np.all(first.status[short] == FitStatus.NOT_CONVERGED)
    assert np.all(full.sse <= bound), np.flatnonzero(full.sse > bound)
    assert np.all(full.rounds[short] >= 2)
    assert np.all(full.status == FitStatus.CONVERGED), full.status_counts()
    # every curve that went on was within one or two more rounds (the batch shrinks)
    assert np.mean(full.rounds > 1) < 0.5 and full.rounds.max() < full.settings.max_rounds


def test_curves_converged_in_the_first_round_are_unchanged(issue_set):
    _, first, full = issue_set
    one = full.rounds == 1
    assert one.sum() >= 32
    assert np.all(first.status[one] == FitStatus.CONVERGED)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(full, name)[one], getattr(first, name)[one])
    # the others only gain
    assert np.all(full.sse[~one] < first.sse[~one])
    assert np.all(full.n_iter[~one] >= first.n_iter[~one])


@pytest.mark.parametrize("which", ["issue_set", "outlier_set"])
def test_statuses_follow_the_stopping_rule_and_the_tolerance(which, request):
    """After one round: CONVERGED where the model's sse_drop meets the stopping rule,
    MAX_ITERATIONS where MODEL_MARGIN sse_drop is within the tolerance, NOT_CONVERGED beyond.
    MAX_ITERATIONS is never a curve whose SSE could still drop by more than the tolerance:
    the later rounds gain less than it on every such curve."""
    (_, y, m), first, full = request.getfixturevalue(which)
    sst = _sst(y, m)
    stop = first.sse_drop <= STOP_RTOL * first.sse + STOP_ATOL * sst
    tol = MODEL_MARGIN * first.sse_drop <= TOL_RTOL * first.sse + TOL_ATOL * sst
    want = np.where(stop, 0, np.where(tol, 1, 6))
    np.testing.assert_array_equal(first.status, want)
    counts = first.status_counts()
    assert counts["not converged"] >= 1 and (which == "issue_set" or counts["max iterations"] >= 5)
    capped = first.status == FitStatus.MAX_ITERATIONS
    gain = first.sse[capped] - full.sse[capped]
    assert np.all(gain <= TOL_RTOL * first.sse[capped] + TOL_ATOL * sst[capped]), gain
    # ok(): fits to use; NOT_CONVERGED is not one of them
    np.testing.assert_array_equal(first.ok(), stop | tol)
    assert FitStatus.NOT_CONVERGED.label == "not converged"
    assert "not a minimum" in FitStatus.NOT_CONVERGED.message
    frame = first.to_frame()
    assert set(frame["status"]) == {FitStatus(c).name.lower() for c in np.unique(first.status)}
    assert (frame["rounds"] == 1).all() and np.isfinite(frame["sse_drop"]).all()
    # with the default rounds every curve of these sets converges
    assert np.all(full.status == FitStatus.CONVERGED), full.status_counts()


def test_rounds_do_not_depend_on_the_batch():
    """A curve's later rounds give the same result alone or among others (compaction: each
    call holds whichever curves are left, padded to 8 or 32 rows)."""
    d = corpus_curves("pythia_mix", 64, seed=2, n_points=(26, N_COLS))
    t, y, m = _padded(d)
    rows = [24, 30, 62, 0, 1]
    together = fit_trajectories(t[rows], y[rows], m[rows])
    for k, i in enumerate(rows[:3]):
        alone = fit_trajectories(t[[i]], y[[i]], m[[i]])
        assert alone.rounds[0] >= 2
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(alone, name)[0], getattr(together, name)[k])


def test_round_rows_are_few_shapes():
    assert [round_rows(k, 8, 2) for k in (1, 9, 17, 500)] == [8, 8, 8, 8]
    assert [round_rows(k, 32, 2) for k in (1, 16, 17, 500)] == [8, 8, 32, 32]
    assert [round_rows(k, 65536, 1) for k in (1, 9, 33, 129, 10**6)] == [8, 32, 128, 512, 65536]
    assert round_rows(40, 128, 2) == 32


@pytest.mark.parametrize(
    ("y", "msg"),
    [
        (np.ones((0, N_COLS)), "no curves"),
        (np.ones((2, 0)), "no points"),
        (np.ones((2, N_COLS)) * (1 + 1j), "y is complex"),
    ],
    ids=["no-curves", "no-points", "complex-y"],
)
def test_bad_data_is_a_named_error(y, msg):
    t = np.linspace(0.0, 143000.0, y.shape[1])
    with pytest.raises(ValueError, match=msg):
        fit_trajectories(t, y)


def test_complex_t_is_a_named_error():
    t = np.linspace(0.0, 143000.0, N_COLS).astype(complex)
    with pytest.raises(ValueError, match="t is complex"):
        fit_trajectories(t, np.ones((2, N_COLS)))


@pytest.mark.parametrize(
    ("options", "msg"),
    [
        ({"n_starts": 0}, "n_starts must be >= 1"),
        ({"n_u_bands": 0}, "n_u_bands must be >= 1"),
        ({"vp_iter": -1}, "vp_iter must be >= 0"),
        ({"newton_iter": -2}, "newton_iter must be >= 0"),
        ({"lm_iter": -1}, "lm_iter must be >= 0"),
        ({"max_rounds": 0}, "max_rounds must be >= 1"),
        ({"round_lm_iter": -1}, "round_lm_iter must be >= 0"),
        ({"n_newton": 8}, "n_newton must be <= n_starts"),
        ({"b_grid": [0.0, 1.0, 2.0]}, "b_grid must be > 0"),
        ({"u_grid": []}, "u_grid must be a non-empty"),
        ({"b_grid": [1.0, np.nan, 2.0]}, "b_grid must be a non-empty 1-D finite"),
        ({"n_starts": 5, "b_grid": [1.0, 2.0]}, "n_starts = 5 bands need"),
        ({"round_vp_iter": 0, "round_newton_iter": 0, "round_lm_iter": 0}, "round_"),
        ({"round_chunk_size": 0}, "round_chunk_size must be >= 1"),
    ],
)
def test_bad_settings_are_named_errors(options, msg):
    with pytest.raises(ValueError, match=msg):
        FitSettings(**options)
    with pytest.raises(ValueError, match=msg):
        fit_trajectories(np.linspace(0.0, 1.0, N_COLS), np.ones((2, N_COLS)), **options)


def test_a_tiny_or_huge_curve_has_the_fit_r2_and_aic_of_its_scaled_copy():
    """A curve scaled by 1e-200 (its SST underflows to 0) or 1e160 (its SSE overflows): same
    status and R^2 as the curve at scale 1, AIC shifted by 2 n log(scale), not NaN. (The
    normalised data differ in the last bits, so flat valleys end elsewhere within the
    stopping rule: R^2 and AIC agree to that.)"""
    d = corpus_curves("pythia_mix", 4, seed=3, n_points=(26, N_COLS))
    t, y, m = _padded(d)
    base = fit_trajectories(t, y, m)
    assert np.all(base.status == FitStatus.CONVERGED)
    n = m.sum(1)
    for scale in (1e-200, 1e160):
        fit = fit_trajectories(t, y * scale, m)
        np.testing.assert_array_equal(fit.status, base.status)
        assert np.all(np.isfinite(fit.r2)) and np.all(np.isfinite(fit.aic))
        np.testing.assert_allclose(fit.r2, base.r2, rtol=1e-7)
        np.testing.assert_allclose(fit.aic, base.aic + 2 * n * np.log(scale), rtol=0, atol=1e-5)


def test_max_rounds_one_is_the_first_round_alone(issue_set):
    (t, y, m), first, _ = issue_set
    assert first.settings.max_rounds == 1 and np.all(first.rounds == 1)
    again = fit_trajectories(t, y, m, settings=dataclasses.replace(FitSettings(), max_rounds=1))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))


def test_every_corpus_set_draws_its_own_curves():
    """Small draws of every set: the shapes, sizes and noise the set names (the full sets are
    fitted in bench/test_bench_fit_corpus.py)."""
    seen = set()
    for name, spec in CORPUS_SETS.items():
        d = corpus_curves(name, 12, seed=1)
        n = d["mask"].sum(1)
        assert d["y"].shape == (12, spec.n_points[1]) and np.all(np.isfinite(d["y"][d["mask"]]))
        assert spec.n_points[0] <= n.min() and n.max() <= spec.n_points[1]
        lo, hi = spec.noise[0] * (1 - 1e-12), spec.noise[1] * (1 + 1e-12)
        assert np.all((lo <= d["noise"]) & (d["noise"] <= hi))
        steps = d["t"][d["mask"]]
        assert np.all(np.isin(steps, np.r_[0, 2 ** np.arange(10), np.arange(1000, 143001, 1000)]))
        again = corpus_curves(name, 12, seed=1)
        np.testing.assert_array_equal(again["y"], d["y"])
        seen.add(d["y"][0, 0])
    assert len(seen) == len(CORPUS_SETS)  # no two sets share a draw
    with pytest.raises(ValueError, match="unknown corpus set"):
        corpus_curves("nope")
