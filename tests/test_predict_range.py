"""How far a prediction reaches (issue 13): the training range of every feature, kept with the
predictor; the features a prediction takes outside it, in the API and from the CLI (a warning on
stderr and an `extrapolated` column); the predictor's whole-model R^2 printed beside it.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from test_predict import ARCH, make_dataset
from test_predictor_format import _rezip

from massact import cli
from massact.curves import PARAM_NAMES
from massact.predict import Predictor, PredictorFileError, train_predictors
from massact.predict._features import EXTRA, FEATURES, MEANINGS


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A predictor trained on one width (d = 64), as the default mini suite's; saved."""
    keys, params, ok = make_dataset(n_models=6, seed=3)
    keys = keys.assign(d=64, d_ff=keys.d_ff // keys.d * 64)
    out = tmp_path_factory.mktemp("narrow")
    pred = train_predictors(keys, params, ok, seed=0, out=out / "predictor")
    return pred, out, keys


def test_every_feature_and_column_has_its_training_range(narrow):
    pred, _, keys = narrow
    assert "d" not in pred.features  # constant: not a feature, but its range is kept
    assert pred.ranges["d"] == (64.0, 64.0)
    used = keys.iloc[pred.keys.index]  # keys holds the usable rows in order
    assert pred.ranges["L"] == (float(keys.L.min()), float(keys.L.max()))
    assert pred.ranges["H_kv"] == (float(used.H.min()), float(used.H.max()))  # dense: H_kv = H
    assert pred.ranges["n_experts"] == pred.ranges["experts_per_token"] == (1.0, 1.0)
    assert pred.ranges["rotary_pct"] == (0.25, 0.25)
    for name in pred.features:
        lo, hi = pred.ranges[name]
        assert lo == pred.X[name].min() and hi == pred.X[name].max()
    table = pred.training_range()
    assert set(table.index) == set(FEATURES) | set(EXTRA)
    assert (table["meaning"] != "").all() and set(MEANINGS) >= set(table.index)
    assert list(table.index[table["feature"]]) == [c for c in table.index if c in pred.features]


def test_ranges_survive_save_and_load(narrow, tmp_path):
    pred, out, _ = narrow
    back = Predictor.load(out)
    assert back.ranges == pred.ranges
    with zipfile.ZipFile(out / "predictor" / "predictor.zip") as zf:
        meta = json.loads(zf.read("massact_predictor.json"))
    assert meta["ranges"]["d"] == [64.0, 64.0] and meta["version"] == 2
    sidecar = json.loads((out / "predictor" / "predictor.json").read_text())
    assert sidecar["ranges"] == meta["ranges"]
    # a file saved before the ranges were kept: loads, with the model features' ranges (X)
    old = {k: v for k, v in meta.items() if k != "ranges"}
    path = _rezip(out / "predictor" / "predictor.zip", tmp_path / "old.zip",
                  {"massact_predictor.json": json.dumps(old).encode()})  # fmt: skip
    legacy = Predictor.load(path)
    assert legacy.ranges == {} and list(legacy.training_range().index) == pred.features
    assert legacy.predict({"L": 6, "d": 2048, "H": 4, "d_ff": 8192}).extrapolated.all()
    bad = {**meta, "ranges": {"d": [64.0]}}
    path = _rezip(out / "predictor" / "predictor.zip", tmp_path / "bad.zip",
                  {"massact_predictor.json": json.dumps(bad).encode()})  # fmt: skip
    with pytest.raises(PredictorFileError, match=r"ranges\['d'\] must be \[min, max\]"):
        Predictor.load(path)


def test_predict_names_the_features_outside_the_range(narrow):
    pred, _, keys = narrow
    seen = keys[keys.model == "m0"].drop(columns="layer").iloc[:1]
    inside = pred.predict(seen)
    assert not inside.extrapolated.any() and (inside.extrapolated_features == "").all()
    assert pred.extrapolation(seen).empty
    wide = {"L": int(keys.L.iloc[0]), "d": 128, "H": int(keys.H.iloc[0]), "d_ff": 256}
    out = pred.predict(wide)
    assert out.extrapolated.all()
    for names in out.extrapolated_features:
        assert {"d", "log(d)"} <= set(names.split(", ")), names
    far = pred.extrapolation(wide)
    assert far.loc["d"].to_dict() == {"asked_min": 128.0, "asked_max": 128.0, "train_min": 64.0,
                                      "train_max": 64.0, "layers_outside": wide["L"]}  # fmt: skip
    deep = pred.extrapolation({**wide, "d": 64, "d_ff": 128, "L": 4 * int(keys.L.max())})
    low = deep.loc["l/L"]  # the values of the layers outside only, all below the range
    assert low.asked_max < low.train_min and 0 < low.layers_outside < 4 * keys.L.max()
    # a mixture of experts is outside a dense training set even where no feature sees it
    moe = pred.predict({**seen.iloc[0][["L", "d", "H", "d_ff"]].to_dict(), "n_experts": 8,
                        "rotary_pct": 0.25, "rotary_base": 1e4})  # fmt: skip
    assert (moe.extrapolated_features == "n_experts").all()
    assert (moe[list(PARAM_NAMES)].to_numpy() == inside[list(PARAM_NAMES)].to_numpy()).all()


def test_skill_is_the_kept_models_test_r2(narrow):
    pred, _, _ = narrow
    skill = pred.skill()
    assert list(skill.index) == list(PARAM_NAMES)
    for p, row in skill.iterrows():
        assert row["model"] == pred.best[p]
        for split in ("model_split", "random_split"):
            t = pred.tables[split]
            want = t[(t.param == p) & (t.model == pred.best[p])].r2.iloc[0]
            assert row[f"{split}_r2"] == want


def _cli(capsys, predictor, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv, "--predictor", str(predictor)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_warns_when_it_extrapolates(narrow, capsys, tmp_path):
    pred, out, _ = narrow
    csv = tmp_path / "p.csv"
    code, text, err = _cli(capsys, out, "--L", "12", "--d", "768", "--H", "12", "--csv", str(csv))
    assert code == 0
    warning = [
        line for line in err.splitlines() if "outside the predictor's training range" in line
    ]
    assert len(warning) == 1 and warning[0].startswith("massact: warning: ")
    assert "d 768 (trained 64)" in warning[0] and "log(d) 6.644 (trained 4.159)" in warning[0]
    head = next(line for line in text.splitlines() if line.startswith("| layer |"))
    assert head.rstrip(" |").endswith("extrapolated")
    rows = [line for line in text.splitlines() if line.startswith("| 0 |")]
    assert "d, " in rows[0] or rows[0].rstrip(" |").endswith("d")
    assert "architecture: L=12, d=768, H=12, d_ff=3072" in text
    # the whole-model R^2 of each kept model, beside the prediction
    assert "R² whole held-out models" in text
    skill = pred.skill()
    for p in PARAM_NAMES:
        line = next(x for x in text.splitlines() if x.startswith(f"| {p} | {pred.best[p]} |"))
        assert f"{skill.loc[p, 'model_split_r2']:.3f}" in line
    table = pd.read_csv(csv, keep_default_na=False)
    assert table["extrapolated"].astype(str).eq("True").all()
    assert table["extrapolated_features"].str.contains("log\\(d\\)").all()


def test_cli_is_quiet_about_range_inside_it(narrow, capsys):
    pred, out, keys = narrow
    r = keys.iloc[0]
    argv = ["--L", str(r.L), "--d", "64", "--H", str(r.H), "--d-ff", str(r.d_ff)]
    code, text, err = _cli(capsys, out, *argv)
    assert code == 0 and "training range" not in err
    rows = [line for line in text.splitlines() if line.startswith("| 0 |")]
    assert rows[0].rstrip(" |").endswith("none")


def test_cli_says_when_whole_model_r2_is_not_positive(narrow, capsys, tmp_path):
    pred, _, _ = narrow
    weak = Predictor(**{**pred.__dict__, "_shap": {}})
    t = weak.tables["model_split"].copy()
    t["r2"] = np.where(t.param == "A", -3.0, 0.5)
    weak.tables = {**weak.tables, "model_split": t}
    path = weak.save(tmp_path / "weak.zip")
    code, text, err = _cli(capsys, path, "--L", "6", "--d", "64", "--H", "4")
    assert code == 0
    assert "R² is <= 0 for A:" in err
    assert np.isclose(weak.skill().loc["A", "model_split_r2"], -3.0)
    assert f"| A | {pred.best['A']} | -3.000 |" in text


def test_default_dims_are_in_range_for_the_test_predictor(narrow):
    pred, _, _ = narrow
    assert (
        not pred.predict({**ARCH, "d": 64, "d_ff": 256})
        .extrapolated_features.str.contains("d_ff/d")
        .any()
    )
