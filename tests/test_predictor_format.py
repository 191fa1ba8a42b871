"""The saved predictor (issue 14, items 7, 9, 13): a zip that loads without running code.

Round trips are exact for every kind of model the selection can keep; pickles, joblib files,
crafted skops members and damaged archives are refused with a one-line error, and a crafted
file's payload never runs (a marker file it would create stays absent).
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict import ARCH, make_dataset

from massact import cli
from massact.curves import PARAM_NAMES
from massact.predict import Predictor, PredictorFileError, train_predictors
from massact.predict._selection import _candidates, _fit

MODEL_KINDS = ("Ridge", "Lasso", "RandomForest", "GradientBoosting", "XGBoost")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained predictor and the results folder its predictor/ was saved into."""
    out = tmp_path_factory.mktemp("run")
    pred = train_predictors(*make_dataset(n_models=6, seed=3), seed=0, out=out / "predictor")
    return pred, out


def _with_every_model_kind(pred: Predictor) -> Predictor:
    """The same predictor, each parameter kept by a different model (and one constant)."""
    from sklearn.dummy import DummyRegressor

    X = pred.X.to_numpy(np.float64)
    cands = _candidates(0)
    models, trees = {}, {}
    for i, p in enumerate(PARAM_NAMES):
        z = pred.transforms[p].transform(np.linspace(0.5, 2.0, len(X)) * (1 + X[:, 0]))
        name = MODEL_KINDS[i]
        models[p] = _fit(cands[name][0], {}, X, z)
        trees[p] = (
            models[p]
            if name in ("RandomForest", "XGBoost")
            else _fit(cands["GradientBoosting"][0], {}, X, z)
        )
    models["K"] = DummyRegressor().fit(X, X[:, 1])
    return Predictor(**{**pred.__dict__, "models": models, "tree_models": trees, "_shap": {}})


def test_round_trip_is_exact_for_every_model_kind(tmp_path, saved):
    pred = _with_every_model_kind(saved[0])
    path = pred.save(tmp_path / "p.zip")
    back = Predictor.load(path)
    arch = pd.DataFrame([ARCH, {**ARCH, "L": 12, "d": 256, "H": 8}, {**ARCH, "L": 2}])
    pd.testing.assert_frame_equal(back.predict(arch, horizon=50), pred.predict(arch, horizon=50),
                                  check_exact=True)  # fmt: skip
    for p in PARAM_NAMES:
        assert type(back.models[p]) is type(pred.models[p])
        assert (back.tree_models[p] is back.models[p]) == (pred.tree_models[p] is pred.models[p])
    for s in pred.tables:
        pd.testing.assert_frame_equal(back.tables[s], pred.tables[s], check_exact=True)
    pd.testing.assert_frame_equal(back.X, pred.X, check_exact=True)
    pd.testing.assert_frame_equal(back.keys, pred.keys, check_exact=True)
    for (a, b), (c, d) in zip(back.model_folds, pred.model_folds):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    np.testing.assert_array_equal(back.splits["random_split"][1], pred.splits["random_split"][1])
    assert (back.best, back.best_tree, back.features, back.notes, back.exclusions) == (
        pred.best, pred.best_tree, pred.features, pred.notes, pred.exclusions)  # fmt: skip
    for p in PARAM_NAMES:
        t, u = back.transforms[p], pred.transforms[p]
        y = np.linspace(-0.5, 40, 9)
        np.testing.assert_array_equal(t.inverse(t.transform(y)), u.inverse(u.transform(y)))
    pd.testing.assert_frame_equal(back.shap_importance(), pred.shap_importance(), rtol=1e-12)


def test_saved_file_is_a_zip_of_safe_formats(saved):
    _, out = saved
    with zipfile.ZipFile(out / "predictor" / "predictor.zip") as zf:
        names = zf.namelist()
        for name in names:
            data = zf.read(name)
            assert b"\x80\x04\x95" not in data[:16] and not data.startswith(b"\x80")  # no pickle
        meta = json.loads(zf.read("massact_predictor.json"))
    assert meta["format"] == "massact.Predictor" and meta["version"] == 2
    assert all(n.endswith((".json", ".skops", ".parquet")) for n in names), names
    assert not (out / "predictor" / "predictor.joblib").exists()


def test_folder_and_results_folder_resolve(saved):
    pred, out = saved
    for where in (out, out / "predictor", out / "predictor" / "predictor.zip"):
        pd.testing.assert_frame_equal(Predictor.load(where).predict(ARCH), pred.predict(ARCH))


# ----------------------------------------------------------------------- hostile files
class _Payload:
    """Unpickling this creates `path` (what an attacker's code would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _pickle_bomb(marker: Path) -> bytes:
    data = pickle.dumps(_Payload(marker))
    assert not marker.exists()
    return data


@pytest.mark.parametrize("name", ["predictor.joblib", "predictor.zip", "model.pkl"])
def test_a_pickle_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(_pickle_bomb(marker))
    with pytest.raises(PredictorFileError, match="pickle/joblib predictor.*refuses"):
        Predictor.load(path)
    assert not marker.exists()


def test_an_old_joblib_results_folder_is_refused_with_the_way_out(tmp_path):
    import joblib

    marker = tmp_path / "pwned"
    (tmp_path / "predictor").mkdir()
    joblib.dump(_Payload(marker), tmp_path / "predictor" / "predictor.joblib")
    with pytest.raises(PredictorFileError, match="re-run `massact report --out"):
        Predictor.load(tmp_path)
    assert not marker.exists()


def _rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename not in replace:
                zout.writestr(info, zin.read(info.filename))
        for name, data in replace.items():
            zout.writestr(name, data)
    return dst


_EVIL = '''
from pathlib import Path


class Evil:
    """Builds itself with code: __setstate__ creates the marker file named in its state."""

    def __setstate__(self, state):
        Path(MARKER).touch()
'''


def test_a_crafted_skops_member_never_runs(tmp_path, saved, monkeypatch):
    import skops.io as sio

    marker = tmp_path / "pwned"
    (tmp_path / "evil_mod.py").write_text(f"MARKER = {str(marker)!r}\n" + _EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    src = saved[1] / "predictor" / "predictor.zip"
    with zipfile.ZipFile(src) as zf:
        name = next(n for n in zf.namelist() if n.startswith("models/") and n.endswith(".skops"))
        member = zf.read(name)
    # the same skops file with its top object turned into evil_mod.Evil
    with zipfile.ZipFile(io.BytesIO(member)) as zin:
        parts = {n: zin.read(n) for n in zin.namelist()}
    schema = json.loads(parts["schema.json"])
    schema["__class__"], schema["__module__"] = "Evil", "evil_mod"
    parts["schema.json"] = json.dumps(schema).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zout:
        for n, data in parts.items():
            zout.writestr(n, data)
    crafted = buf.getvalue()
    bad = _rezip(src, tmp_path / "bad.zip", {name: crafted})
    with pytest.raises(PredictorFileError, match=r"evil_mod\.Evil.*refused") as err:
        Predictor.load(bad)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # control: the crafted member does run code when a loader trusts it
    sio.loads(crafted, trusted=["evil_mod.Evil"])
    assert marker.exists()
    sys.modules.pop("evil_mod", None)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("models/A.skops", "models/A.skops is not a valid skops model"),  # a pickle there
        ("evil.pkl", "unexpected members"),
    ],
)
def test_pickles_inside_the_zip_never_run(tmp_path, saved, member, message):
    marker = tmp_path / "pwned"
    bad = _rezip(saved[1] / "predictor" / "predictor.zip", tmp_path / "bad.zip",
                 {member: _pickle_bomb(marker)})  # fmt: skip
    with pytest.raises(PredictorFileError, match=message):
        Predictor.load(bad)
    assert not marker.exists()


def test_bad_metadata_is_named(tmp_path, saved):
    src = saved[1] / "predictor" / "predictor.zip"
    with zipfile.ZipFile(src) as zf:
        meta = json.loads(zf.read("massact_predictor.json"))
    cases = {
        "format": ({**meta, "format": "other"}, "not a massact predictor"),
        "version": ({**meta, "version": 1}, "format version 1"),
        "transform": ({**meta, "transforms": {**meta["transforms"], "K": {"kind": "exp"}}},
                      "kind log1p, slog1p or yeo-johnson"),
        "split": ({**meta, "splits": {"random_split": [[0, 10**9], [1]]}}, "indices outside"),
        "model kind": ({**meta, "models": {**meta["models"], "A": {"kind": "pickle",
                        "file": meta["models"]["A"].get("file")}}}, "kind 'pickle'"),
        "list": ([1, 2], "not a JSON object"),
    }  # fmt: skip
    for what, (m, message) in cases.items():
        bad = _rezip(src, tmp_path / "bad.zip", {"massact_predictor.json": json.dumps(m).encode()})
        with pytest.raises(PredictorFileError, match=message):
            Predictor.load(bad)
        assert what


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (lambda u: u.iloc[:-1], r"usable\.parquet has \d+ rows, X \d+$"),
        (lambda u: u.astype({"K": "int64"}), r"usable\.parquet columns \['K'\] are not bool$"),
        (lambda u: u.drop(columns="K"), r"usable\.parquet columns \['A'"),
    ],
    ids=["rows", "dtype", "columns"],
)
def test_a_damaged_usable_table_is_named(tmp_path, saved, table, message):
    """usable.parquet (which rows each parameter learnt from) that does not fit X."""
    usable = pd.DataFrame(True, index=range(len(saved[0].X)), columns=list(PARAM_NAMES))
    buf = io.BytesIO()
    table(usable).to_parquet(buf)
    src = saved[1] / "predictor" / "predictor.zip"
    bad = _rezip(src, tmp_path / "bad.zip", {"usable.parquet": buf.getvalue()})
    with pytest.raises(PredictorFileError, match=message) as err:
        Predictor.load(bad)
    assert "\n" not in str(err.value)


def test_save_refuses_a_pickle_name(tmp_path, saved):
    with pytest.raises(ValueError, match="without pickles"):
        saved[0].save(tmp_path / "predictor.joblib")


# ----------------------------------------------------------------------- one-line CLI errors
def _predict_cli(capsys, predictor: Path, *extra: str) -> tuple[int, str]:
    argv = ["predict", "--L", "6", "--d", "128", "--H", "4", "--predictor", str(predictor)]
    code = cli.main([*argv, *extra])
    return code, capsys.readouterr().err


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and err.startswith("massact: error: "), err
    assert "Traceback" not in err


def test_cli_refuses_damaged_and_foreign_files_in_one_line(tmp_path, saved, capsys):
    good = (saved[1] / "predictor" / "predictor.zip").read_bytes()
    readme = Path(__file__).resolve().parents[1] / "README.md"
    files = {
        "README": (readme, "not a saved massact predictor"),
        "garbage": (b"\x00garbage" * 100, "not a saved massact predictor"),
        "zlib": (b"\x78\x9c" + b"\x01" * 50, "pickle/joblib"),
        "eof": (b"\x80\x04\x95", "pickle/joblib"),
        "truncated": (good[: len(good) // 2], "truncated or damaged"),
        "header only": (good[:30], "truncated or damaged"),
        "empty": (b"", "not a saved massact predictor"),
    }
    for what, (data, message) in files.items():
        if isinstance(data, Path):
            path = data
        else:
            path = tmp_path / f"{what}.zip"
            path.write_bytes(data)
        code, err = _predict_cli(capsys, path)
        assert code == 1, what
        _one_line(err)
        assert message in err and str(path) in err, (what, err)


def test_cli_runs_from_a_results_folder(saved, capsys):
    code = cli.main(["predict", "--L", "6", "--d", "128", "--H", "4", "--predictor", str(saved[1])])
    assert code == 0 and "| layer |" in capsys.readouterr().out
