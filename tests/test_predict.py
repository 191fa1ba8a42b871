"""Prediction stage: architecture -> curve parameters, on data where the relation is known.

The constructed dataset: K depends only on H/d, lam only on the layer position l/L, the others on
other features; a few curves failed or have non-finite parameters. The best model must recover
the relations, SHAP must name the right feature, and the plumbing (splits, transforms, configs,
save/load, errors) must hold.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import lambertw

from massact.curves import PARAM_NAMES
from massact.predict import arch_from_config
from massact.predict._features import (
    DERIVED,
    FEATURES,
    MODELS,
    TargetTransform,
    architecture_features,
    transform_kind,
)
from massact.predict._predictor import Predictor, predict_from_config, t_peak
from massact.predict._selection import model_folds, train_predictors

POSITION = {"l/L", "(l/L)^2", "(l/L)^3", "sqrt(l/L)"}  # monotone maps of one another
ARCH = {"L": 6, "d": 128, "H": 4, "d_ff": 512}


def make_dataset(n_models: int = 14, seed: int = 0, noise: float = 0.01):
    """keys [N rows], params [N, 5], ok [N] with 3 failed and 3 non-finite curves."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        L = int(rng.choice([4, 6, 8, 12]))
        d = int(rng.choice([64, 128, 256]))
        H, r = int(rng.choice([2, 4, 8])), int(rng.choice([2, 4]))
        rows += [
            {"suite": "t", "model": f"m{m}", "layer": i, "L": L, "d": d, "H": H, "d_ff": r * d,
             "rotary_pct": 0.25, "rotary_base": 1e4}
            for i in range(L)
        ]  # fmt: skip
    keys = pd.DataFrame(rows)
    pos, hd = (keys.layer + 1) / keys.L, keys.H / keys.d

    def eps():
        return 1 + noise * rng.standard_normal(len(keys))

    params = np.stack(
        [(30 + 20 * pos) * eps(), (0.05 + 1.5 * pos) * eps(), 1e-3 * (1 + keys.L / 10) * eps(),
         (1 + 0.5 * keys.d_ff / keys.d) * eps(), (5 + 1500 * hd) * eps()], 1,
    )  # fmt: skip
    ok = np.ones(len(keys), bool)
    ok[[1, 7, 12]] = False
    params[[2, 9], 1] = np.nan
    params[15, 4] = np.inf
    return keys, params, ok


@pytest.fixture(scope="module")
def data():
    return make_dataset()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("predict")


@pytest.fixture(scope="module")
def pred(data, out_dir):
    return train_predictors(*data, seed=0, out=out_dir)


def test_recovers_known_relations(pred):
    for split, floor in (("random_split", 0.9), ("model_split", 0.8)):
        r2 = pred.table(split, "r2")
        assert list(r2.columns) == list(MODELS) and list(r2.index) == list(PARAM_NAMES)
        assert r2.loc["K"].max() > floor, (split, r2.loc["K"])
        assert r2.loc["lam"].max() > floor, (split, r2.loc["lam"])
        for metric in ("mae", "rmse"):  # standardised units: a good fit is far below 1
            assert pred.table(split, metric).loc[["K", "lam"]].min(axis=1).max() < 0.5


def test_shap_ranks_the_true_feature_first(pred):
    imp = pred.shap_importance()
    assert list(imp.index) == pred.features and set(imp.columns) == set(PARAM_NAMES)
    assert imp["K"].idxmax() == "H/d", imp["K"].sort_values()
    assert imp["lam"].idxmax() in POSITION, imp["lam"].sort_values()


def test_failed_curves_excluded_and_counted(data, pred):
    keys, params, ok = data
    assert pred.exclusions == {
        "total": len(keys), "fit_failed": 3, "degenerate_params": 0, "non_finite_params": 3,
        "non_finite_features": 0, "used": len(keys) - 6,
    }  # fmt: skip
    assert len(pred.X) == len(keys) - 6 and np.isfinite(pred.X.to_numpy()).all()
    # constant raw columns (rotary) are dropped, varying ones (L, d, H, d_ff) kept
    assert pred.features == DERIVED + ["L", "d", "H", "d_ff"]


def test_degenerate_curves_excluded_and_counted(data):
    keys, params, ok = data
    deg = np.zeros(len(keys), bool)
    deg[np.flatnonzero(ok & np.isfinite(params).all(1))[:4]] = True
    pred = train_predictors(keys, params, ok, degenerate=deg, seed=0)
    assert pred.exclusions["degenerate_params"] == 4
    assert pred.exclusions["used"] == len(keys) - 10 == len(pred.X)
    with pytest.raises(ValueError, match="degenerate"):
        train_predictors(keys, params, ok, degenerate=deg[:-1])


@pytest.mark.parametrize(
    "kind,y",
    [
        ("log1p", np.array([0.0, 1e-4, 0.3, 5.0, 2e4])),
        ("slog1p", np.array([-300.0, -0.5, 0.0, 0.2, 40.0])),
        ("yeo-johnson", np.array([-3.0, 0.0, 2.0, 80.0, 3000.0])),
    ],
)
def test_transforms_invert(kind, y):
    tt = TargetTransform(kind).fit(y)
    z = tt.transform(y)
    np.testing.assert_allclose(z.mean(), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(), 1, rtol=1e-12)
    np.testing.assert_allclose(tt.inverse(z), y, rtol=1e-9, atol=1e-12)


def test_transform_choice_is_sign_safe():
    assert transform_kind("A", np.array([0.0, 3.0])) == "log1p"
    assert transform_kind("A", np.array([-2.0, 3.0])) == "slog1p"
    assert transform_kind("K", np.array([1.0, 3.0])) == "yeo-johnson"
    with pytest.raises(ValueError, match="slog1p"):
        TargetTransform("log1p").fit(np.array([-2.0, 1.0]))


def test_model_split_holds_out_whole_models(pred):
    groups = pred.keys["group"].to_numpy()
    seen = np.zeros(len(groups), int)
    for tr, te in pred.model_folds:
        assert not set(groups[tr]) & set(groups[te])
        seen[te] += 1
    assert (seen == 1).all()  # every curve is predicted out-of-model exactly once
    tr, te = pred.splits["random_split"]
    assert not set(tr) & set(te) and len(te) == pytest.approx(0.2 * len(groups), abs=1)
    assert model_folds(np.array(["a", "a", "b", "b"])) is None


def test_two_models_skip_the_model_split():
    keys, params, ok = make_dataset(n_models=14)
    two = keys.model.isin(["m0", "m1", "m2", "m3"]).to_numpy()
    keys = keys.assign(model=np.where(keys.model.isin(["m0", "m1"]), "a", "b"))[two]
    p = train_predictors(keys, params[two], ok[two], seed=0)
    assert p.tables["model_split"].empty and p.selection_split == "random_split"
    assert "not run" in p.markdown() and any("model_split" in n for n in p.notes)


def test_predict_dict(pred):
    out = pred.predict(ARCH, horizon=500)
    assert list(out.layer) == list(range(6)) and len(out) == 6
    assert np.isfinite(out[list(PARAM_NAMES)].to_numpy()).all()
    assert (out.steady_state == out.K).all()
    # K depends on H/d = 4/128: the predicted K is near the true 5 + 1500 * H/d
    np.testing.assert_allclose(out.K, 5 + 1500 * 4 / 128, rtol=0.1)
    # t_peak against a numerical argmax of the predicted curve (Eq. 9), on a grid of x > 0
    for r in out.itertuples():
        assert r.A > 0  # so the critical point is a maximum
        x = np.linspace(1e-9, 3 * r.gamma * abs(r.t_peak) + 3 * r.t0, 400001)
        f = r.A * np.exp(-r.lam * x) * np.log(x) + r.K
        t = (x - r.t0) / r.gamma
        step = t[1] - t[0]
        assert abs(t[np.argmax(f)] - r.t_peak) <= 2 * step
        assert r.peak_value == pytest.approx(f.max(), rel=1e-9)
    assert (out.peak_expected == ((out.t_peak > 0) & (out.t_peak <= 500))).all()
    assert (pred.predict(ARCH).peak_expected == (out.t_peak > 0)).all()


def test_extrapolation_is_flagged(data, pred):
    keys = data[0]
    seen = keys[keys.model == "m0"].drop(columns="layer").iloc[:1]
    assert not pred.predict(seen).extrapolated.any()
    assert pred.predict({"L": 48, "d": 4096, "H": 32, "d_ff": 16384}).extrapolated.all()


def test_predict_frame_of_models_keeps_columns(pred):
    arch = pd.DataFrame([{**ARCH, "model": "x"}, {**ARCH, "L": 3, "model": "y"}])
    out = pred.predict(arch)
    assert list(out.model) == ["x"] * 6 + ["y"] * 3
    one = pred.predict(ARCH)
    pd.testing.assert_frame_equal(
        out[out.model == "x"][list(PARAM_NAMES)].reset_index(drop=True), one[list(PARAM_NAMES)]
    )


def test_predict_from_hf_configs(tmp_path, pred):
    import transformers as tf

    path = pred.save(tmp_path / "predictor.zip")
    want = pred.predict(ARCH)[list(PARAM_NAMES)]
    cfgs = {
        "neox": tf.GPTNeoXConfig(
            num_hidden_layers=6, hidden_size=128, num_attention_heads=4, intermediate_size=512
        ),
        "gpt2": tf.GPT2Config(n_layer=6, n_embd=128, n_head=4),  # n_inner None = 4d
        "llama": tf.LlamaConfig(
            num_hidden_layers=6, hidden_size=128, num_attention_heads=4, intermediate_size=512
        ),
    }
    for name, cfg in cfgs.items():
        cfg.save_pretrained(tmp_path / name)
        for src in (tmp_path / name, tmp_path / name / "config.json", str(tmp_path / name)):
            got = predict_from_config(src, path)
            pd.testing.assert_frame_equal(got[list(PARAM_NAMES)], want, obj=name)
    neox = arch_from_config(tmp_path / "neox")
    assert neox == {**ARCH, "rotary_pct": 0.25, "rotary_base": 10000.0}
    old = {"num_hidden_layers": 6, "hidden_size": 128, "num_attention_heads": 4,
           "intermediate_size": 512, "rotary_pct": 0.25, "rotary_emb_base": 10000}  # fmt: skip
    assert arch_from_config(old) == neox  # transformers v4 (Pythia's own config.json) keys
    assert arch_from_config(tmp_path / "llama")["rotary_pct"] == 1.0
    got = predict_from_config(dict(ARCH), pred, horizon=1000)  # explicit dims, a Predictor
    pd.testing.assert_frame_equal(got[list(PARAM_NAMES)], want)


def test_save_load_round_trip(tmp_path, pred):
    path = pred.save(tmp_path / "sub" / "p.zip")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["features"] == pred.features and meta["best"] == pred.best
    back = Predictor.load(path)
    arch = pd.DataFrame([ARCH, {**ARCH, "L": 12, "d": 256, "H": 8}])
    pd.testing.assert_frame_equal(back.predict(arch, horizon=100), pred.predict(arch, horizon=100))
    for s in pred.tables:
        pd.testing.assert_frame_equal(back.tables[s], pred.tables[s])


def test_deterministic_for_a_seed(data, pred):
    again = train_predictors(*data, seed=0)
    for s in pred.tables:
        pd.testing.assert_frame_equal(again.tables[s], pred.tables[s])
    assert again.best == pred.best
    pd.testing.assert_frame_equal(again.predict(ARCH), pred.predict(ARCH))


def test_tables_and_markdown(out_dir, pred):
    assert (out_dir / "predictor.zip").is_file() and (out_dir / "predictor.json").is_file()
    md = (out_dir / "prediction_tables.md").read_text()
    assert md == pred.markdown() and "whole models" in md and "Random 80/20" in md
    t = pd.read_csv(out_dir / "prediction_random_split.csv")
    assert len(t) == len(PARAM_NAMES) * len(MODELS)
    assert t.n_test.iloc[0] == len(pred.splits["random_split"][1])
    for split in ("random_split", "model_split"):
        for _, row in pred.table(split, "r2").iterrows():  # each row's best R^2 is in bold
            assert f"**{row.max():.3f}**" in md
    assert md.count("| K |") == 6  # R^2, MAE, RMSE for both splits


def test_features_follow_table_4():
    rows = pd.DataFrame(
        {"layer": [0, 3], "L": [4, 4], "d": [64, 64], "H": [2, 2], "d_ff": [256, 256]}
    )
    f = architecture_features(rows)
    np.testing.assert_allclose(f["l/L"], [0.25, 1.0])  # 1-based layer index
    np.testing.assert_allclose(f["l*L"], [4, 16])
    np.testing.assert_allclose(f["(l/L)^3"], [0.25**3, 1.0])
    np.testing.assert_allclose(f["H/d"], 2 / 64)
    np.testing.assert_allclose(f["log(d)"], np.log(64))
    assert set(f.columns) == set(FEATURES) - {"rotary_pct", "rotary_base"}


def test_varying_rotary_is_a_feature():
    keys, params, ok = make_dataset(n_models=4, seed=1)
    keys = keys.assign(rotary_pct=np.where(keys.model.isin(["m0", "m1"]), 0.25, 1.0))
    p = train_predictors(keys, params, ok)
    assert "rotary_pct" in p.features and "rotary_base" not in p.features
    with pytest.raises(ValueError, match="rotary_pct"):
        p.predict(ARCH)
    assert len(p.predict({**ARCH, "rotary_pct": 0.5})) == 6


def test_t_peak_formula():
    lam, gamma, t0 = np.array([0.5, 2.0, 0.0, -1.0]), np.array([1e-3, 1e-2, 1e-3, 1e-3]), 1.5
    tp = t_peak(lam, gamma, t0)
    want = (np.exp(lambertw(1 / lam[:2]).real) - t0) / gamma[:2]
    np.testing.assert_allclose(tp[:2], want, rtol=1e-12)
    assert np.isnan(tp[2:]).all()  # no peak for lam <= 0


def test_figures(tmp_path, pred):
    import matplotlib.pyplot as plt

    shap_paths = pred.shap_figures(tmp_path / "fig")
    pdp_paths = pred.pdp_figures(tmp_path / "fig")
    names = {p.name for p in shap_paths}
    assert {
        f"shap_beeswarm_{p}.png" for p in PARAM_NAMES
    } <= names and "shap_waterfall_K.png" in names
    assert {p.name for p in pdp_paths} == {f"pdp_{p}.png" for p in PARAM_NAMES}
    for p in shap_paths + pdp_paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert plt.get_fignums() == []  # every figure closed


def test_clear_errors(tmp_path, data, pred):
    keys, params, ok = data
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        train_predictors(keys, params[:, :4], ok)
    with pytest.raises(ValueError, match="disagree"):
        train_predictors(keys, params[:-1], ok[:-1])
    with pytest.raises(ValueError, match="'model' column"):
        train_predictors(keys.drop(columns="model"), params, ok)
    with pytest.raises(ValueError, match="lack columns"):
        train_predictors(keys.drop(columns="d_ff"), params, ok)
    with pytest.raises(ValueError, match="usable curves"):
        train_predictors(keys, params, np.zeros(len(keys), bool))
    with pytest.raises(ValueError, match="0 <= layer < L"):
        architecture_features(keys.assign(layer=keys.L))
    with pytest.raises(ValueError, match="lacks"):
        pred.predict({"L": 6, "d": 128, "H": 4})
    with pytest.raises(ValueError, match="horizon"):
        pred.predict(ARCH, horizon=-5)
    with pytest.raises(TypeError, match="dict or a DataFrame"):
        pred.predict([6, 128, 4, 512])
    with pytest.raises(ValueError, match="num_attention_heads"):
        arch_from_config({"num_hidden_layers": 6, "hidden_size": 128})
    with pytest.raises(ValueError, match="intermediate_size"):
        arch_from_config({"num_hidden_layers": 6, "hidden_size": 128, "num_attention_heads": 4})
    with pytest.raises(ValueError, match=r"explicit dimensions lack \['H'\]"):
        arch_from_config({"L": 6, "d": 128})
    with pytest.raises(TypeError, match="config must be"):
        arch_from_config(42)
    with pytest.raises(FileNotFoundError, match="config"):
        arch_from_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        arch_from_config(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="earlier run"):
        Predictor.load(tmp_path / "missing.zip")
    import joblib

    joblib.dump({"not": "a predictor"}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="pickle/joblib predictor"):
        Predictor.load(tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="split must be"):
        pred.table("nope")
