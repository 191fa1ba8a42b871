"""A saved predictor: one zip file that loads without running code (no pickle).

`predictor.zip` holds
```
massact_predictor.json   format, version, features, seed, choices, notes, splits, transforms
                         (kind, mean, std, Yeo-Johnson lambda), which file holds each model
                         and the training range [min, max] of every feature and architecture
                         column ("ranges"; optional: files saved before it use X's ranges)
models/<param>.skops     scikit-learn models in skops' secure format (only the tree structure
                         `sklearn.tree._tree.Tree` is trusted beyond skops' defaults)
models/<param>.xgb.json  XGBoost models in XGBoost's own JSON model format
tree_models/<param>.*    the best tree model per parameter (SHAP, PDP) where it is not the model
tables/<split>.parquet   the predictor tables; X.parquet, keys.parquet: training features, keys
usable.parquet           which rows of X each parameter learned from (absent: every row)
```
and `<name>.json` beside it repeats the metadata for people (never read back).

Loading checks every part against that list and refuses anything else with a one-line
`PredictorFileError`: a pickle or joblib file (the format before; loading one runs whatever code
it holds), a file that is not a zip, a truncated or damaged one, unknown members, types that are
not the predictor's own models, inconsistent metadata. The file is written atomically
(massact.dataset.atomic_write_bytes): a kill or a full disk leaves the last good copy.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..curves import PARAM_NAMES
from ._features import NOT_PREDICTED, SPLITS, TargetTransform

FORMAT, VERSION = "massact.Predictor", 2
PREDICTOR_FILE = "predictor.zip"
LEGACY_FILE = "predictor.joblib"
_META = "massact_predictor.json"
_MAX_BYTES = 1 << 30  # a real predictor is a few MB; refuse to unpack more than 1 GiB
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same predictor gives the same bytes
_TRUSTED_EXTRA = ("sklearn.tree._tree.Tree",)  # the fitted trees of RF / GB (plain arrays)
_PICKLE_HEADS = (b"\x80", b"\x78", b"\x1f\x8b", b"ZF")  # pickle, zlib, gzip, old joblib


class PredictorFileError(ValueError):
    """A file that is not a loadable massact predictor (the message says why, in one line)."""


# --------------------------------------------------------------------------- finding the file
def resolve(path: str | Path) -> Path:
    """The predictor file for `path`: the file itself, or predictor.zip in a predictor folder or
    in a results folder (`<results>/predictor/`). A folder holding only the old pickle format
    resolves to that file (so that `read` refuses it with the reason)."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(
                f"no saved predictor at {path} (written by an earlier run: "
                f"<results>/predictor/{PREDICTOR_FILE})"
            )
        return path
    for folder in (path, path / "predictor"):
        for name in (PREDICTOR_FILE, LEGACY_FILE):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"no saved predictor in {path} (run `python -m massact.run --fast` first, or give the "
        f"results folder of an earlier run, or its predictor/{PREDICTOR_FILE})"
    )


# --------------------------------------------------------------------------- writing
def _model_bytes(model) -> tuple[str, bytes]:
    """('xgboost', XGBoost JSON) or ('skops', skops bytes) of one fitted model."""
    if type(model).__module__.split(".")[0] == "xgboost":
        # what XGBRegressor.save_model writes (the booster plus its sklearn type), in memory
        booster = model.get_booster()
        booster.set_attr(scikit_learn=json.dumps({"_estimator_type": "regressor"}))
        try:
            return "xgboost", bytes(booster.save_raw("json"))
        finally:
            booster.set_attr(scikit_learn=None)
    import skops.io as sio

    return "skops", sio.dumps(model)


def _parquet(frame: pd.DataFrame) -> bytes:
    return frame.to_parquet(index=False)


def to_bytes(pred: Any) -> bytes:
    """The predictor.zip bytes of a Predictor (see the module docstring)."""
    import sklearn
    import xgboost

    members: dict[str, bytes] = {}
    refs: dict[str, dict[str, dict]] = {"models": {}, "tree_models": {}}
    for group in ("models", "tree_models"):
        for p, m in getattr(pred, group).items():
            if group == "tree_models" and m is pred.models.get(p):
                refs[group][p] = {"same_as": "models"}
                continue
            kind, data = _model_bytes(m)
            name = f"{group}/{p}.{'xgb.json' if kind == 'xgboost' else 'skops'}"
            members[name] = data
            refs[group][p] = {"kind": kind, "file": name}
    for s, t in pred.tables.items():
        members[f"tables/{s}.parquet"] = _parquet(t)
    if pred.X is not None:
        members["X.parquet"] = _parquet(pred.X)
    if pred.keys is not None:
        members["keys.parquet"] = _parquet(pred.keys)
    if getattr(pred, "usable", None) is not None:
        members["usable.parquet"] = _parquet(pred.usable)
    meta = {
        "format": FORMAT, "version": VERSION, "features": list(pred.features),
        "seed": int(pred.seed), "exclusions": pred.exclusions, "notes": list(pred.notes),
        "selection_split": pred.selection_split, "best": pred.best, "best_tree": pred.best_tree,
        "splits": {s: [np.asarray(a).tolist() for a in ab] for s, ab in pred.splits.items()},
        "model_folds": [[np.asarray(a).tolist() for a in ab] for ab in pred.model_folds],
        "transforms": {p: t.to_dict() for p, t in pred.transforms.items()},
        "ranges": _ranges_json(pred), **refs,
        "versions": {"sklearn": sklearn.__version__, "xgboost": xgboost.__version__},
    }  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in [(_META, json.dumps(meta, indent=1).encode()), *members.items()]:
            info = zipfile.ZipInfo(name, _DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _ranges_json(pred: Any) -> dict[str, list[float]]:
    return {str(c): [float(lo), float(hi)] for c, (lo, hi) in (pred.ranges or {}).items()}


def write(pred: Any, path: str | Path) -> Path:
    """Save `pred` to `path` (a file; a folder gets predictor.zip) and `<path>.json` for people.

    Both are written atomically; the predictor file first."""
    from ..dataset import atomic_write_bytes

    path = Path(path)
    if path.is_dir():
        path = path / PREDICTOR_FILE
    if path.suffix.lower() in (".joblib", ".pkl", ".pickle"):
        raise ValueError(
            f"{path}: predictors are saved as a zip without pickles; give a .zip path "
            f"(e.g. {path.with_suffix('.zip').name})"
        )
    atomic_write_bytes(path, to_bytes(pred))
    info = {
        "format": FORMAT, "version": VERSION, "file": path.name, "features": pred.features,
        "seed": pred.seed, "best": pred.best, "best_tree": pred.best_tree,
        "selection_split": pred.selection_split, "exclusions": pred.exclusions,
        "notes": pred.notes, "transforms": {p: t.kind for p, t in pred.transforms.items()},
        "tables": {s: t.to_dict(orient="records") for s, t in pred.tables.items()},
        "ranges": _ranges_json(pred),
    }  # fmt: skip
    text = json.dumps(info, indent=1, default=float)
    atomic_write_bytes(path.with_suffix(".json"), text.encode())
    return path


# --------------------------------------------------------------------------- reading
def _allowed_members() -> set[str]:
    names = {_META, "X.parquet", "keys.parquet", "usable.parquet"}
    names |= {f"tables/{s}.parquet" for s in SPLITS}
    for group in ("models", "tree_models"):
        for p in PARAM_NAMES:
            names |= {f"{group}/{p}.skops", f"{group}/{p}.xgb.json"}
    return names


def _sklearn_types() -> tuple[type, ...]:
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Lasso, Ridge
    from sklearn.pipeline import Pipeline

    return (Pipeline, Ridge, Lasso, RandomForestRegressor, GradientBoostingRegressor,
            DummyRegressor)  # fmt: skip


def _load_skops(data: bytes, where: str):
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    unknown = sorted(set(untrusted) - set(_TRUSTED_EXTRA))
    if unknown:
        raise PredictorFileError(
            f"{where} holds types a massact predictor never contains ({', '.join(unknown)}): "
            "refused, as loading them could run code"
        )
    model = sio.loads(data, trusted=[t for t in untrusted if t in _TRUSTED_EXTRA])
    if not isinstance(model, _sklearn_types()):
        raise PredictorFileError(f"{where} holds a {type(model).__name__}, not a regressor")
    from sklearn.linear_model import Lasso, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(model, Pipeline):
        steps = [s for _, s in model.steps]
        if len(steps) != 2 or not (
            isinstance(steps[0], StandardScaler) and isinstance(steps[1], Ridge | Lasso)
        ):
            kinds = [type(s).__name__ for s in steps]
            raise PredictorFileError(f"{where}: an unexpected pipeline of {kinds}")
    return model


def _load_xgboost(data: bytes, where: str):
    from xgboost import XGBRegressor

    if not data.lstrip()[:1] == b"{":
        raise PredictorFileError(f"{where} is not an XGBoost JSON model")
    model = XGBRegressor()
    model.load_model(bytearray(data))
    return model


def _parse(name: str, what: str, parse, *args):
    """parse(*args), with any parser error turned into a PredictorFileError naming the member."""
    try:
        return parse(*args)
    except PredictorFileError:
        raise
    except Exception as err:  # untrusted bytes: any parser error means a bad file
        raise PredictorFileError(
            f"member {name} is not a valid {what} ({_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise PredictorFileError(f"bad metadata: {what}")


def _str_map(d: Any, what: str) -> dict[str, str]:
    _check(isinstance(d, dict), f"{what} must be an object")
    _check(all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()), f"{what} types")
    return d


def _index_lists(v: Any, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    _check(isinstance(v, list) and len(v) == 2, f"{what} must be a (train, test) pair")
    out = []
    for a in v:
        _check(isinstance(a, list) and all(type(i) is int for i in a), f"{what}: integer lists")
        arr = np.asarray(a, np.int64).reshape(-1)
        _check(bool(((arr >= 0) & (arr < n)).all()), f"{what}: indices outside 0..{n - 1}")
        out.append(arr)
    return out[0], out[1]


def _fields(meta: Any, members: set[str], read) -> dict[str, Any]:
    """Predictor fields from the metadata, the archive's member names and the member reader
    `read(name) -> bytes`."""
    _check(isinstance(meta, dict), "not a JSON object")
    if meta.get("format") != FORMAT:
        raise PredictorFileError(f"not a massact predictor (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise PredictorFileError(
            f"predictor format version {meta.get('version')!r}; this massact reads {VERSION}"
        )
    features = meta.get("features")
    _check(isinstance(features, list) and features, "features must be a non-empty list")
    _check(all(isinstance(f, str) for f in features), "features must be names")
    _check(type(meta.get("seed")) is int, "seed must be an integer")
    _check(isinstance(meta.get("selection_split"), str), "selection_split must be a name")
    _check(isinstance(meta.get("notes"), list), "notes must be a list")
    _check(all(isinstance(n, str) for n in meta["notes"]), "notes must be text")
    _check(isinstance(meta.get("exclusions"), dict), "exclusions must be an object")
    best, best_tree = _str_map(meta.get("best"), "best"), _str_map(meta.get("best_tree"), "best")

    def frame(name: str, columns=None) -> pd.DataFrame:
        f = _parse(name, "Parquet table", pd.read_parquet, io.BytesIO(read(name)))
        if columns is not None:
            _check(list(f.columns) == list(columns), f"{name} columns {list(f.columns)}")
        return f

    X = frame("X.parquet", features)
    _check(len(X) > 0 and all(X[c].dtype == np.float64 for c in X), "X must be float rows")
    keys = frame("keys.parquet")
    _check({"model", "layer"} <= set(keys.columns) and len(keys) == len(X), "keys")
    usable = None  # absent: every row trained every parameter
    if "usable.parquet" in members:
        usable = frame("usable.parquet", PARAM_NAMES)
        _check(len(usable) == len(X), f"usable.parquet has {len(usable)} rows, X {len(X)}")
        odd = [c for c in usable if usable[c].dtype != bool]
        _check(not odd, f"usable.parquet columns {odd} are not bool")
    tables = {}
    for s in SPLITS:
        if f"tables/{s}.parquet" in members:
            tables[s] = frame(f"tables/{s}.parquet")
    n = len(X)
    splits = meta.get("splits")
    _check(isinstance(splits, dict), "splits must be an object")
    splits = {s: _index_lists(v, n, f"split {s}") for s, v in splits.items()}
    folds = meta.get("model_folds")
    _check(isinstance(folds, list), "model_folds must be a list")
    folds = [_index_lists(v, n, "model fold") for v in folds]
    tf = meta.get("transforms")
    _check(isinstance(tf, dict) and set(tf) == set(PARAM_NAMES), "a transform per parameter")
    try:
        transforms = {p: TargetTransform.from_dict(tf[p]) for p in PARAM_NAMES}
    except ValueError as err:
        raise PredictorFileError(f"bad metadata: {err}") from None
    groups: dict[str, dict] = {"models": {}, "tree_models": {}}
    for group in groups:
        refs = meta.get(group)
        _check(isinstance(refs, dict) and set(refs) <= set(PARAM_NAMES), f"{group} names")
        for p, ref in refs.items():
            _check(isinstance(ref, dict), f"{group}[{p}] must be an object")
            if group == "tree_models" and ref == {"same_as": "models"}:
                _check(p in groups["models"], f"tree_models[{p}] refers to no model")
                groups[group][p] = groups["models"][p]
                continue
            kind, name = ref.get("kind"), ref.get("file")
            _check(name in members, f"{group}[{p}] file {name!r} is not in the archive")
            loader = {"skops": _load_skops, "xgboost": _load_xgboost}.get(kind)
            _check(loader is not None, f"{group}[{p}] kind {kind!r}")
            m = _parse(name, f"{kind} model", loader, read(name), name)
            n_in = getattr(m, "n_features_in_", len(features))
            _check(n_in == len(features), f"{name} takes {n_in} features, not {len(features)}")
            groups[group][p] = m
    unlearned = {p for p in PARAM_NAMES if best.get(p) == NOT_PREDICTED}
    _check(set(groups["models"]) == set(PARAM_NAMES) - unlearned, "a model per parameter")
    ranges = _read_ranges(meta.get("ranges", {}))  # absent in files saved before: from X
    return {
        "features": features, "seed": meta["seed"], "exclusions": meta["exclusions"],
        "notes": meta["notes"], "selection_split": meta["selection_split"], "tables": tables,
        "splits": splits, "model_folds": folds, "X": X, "keys": keys, "usable": usable,
        "transforms": transforms,
        "models": groups["models"], "best": best, "tree_models": groups["tree_models"],
        "best_tree": best_tree, "ranges": ranges,
    }  # fmt: skip


def _read_ranges(v: Any) -> dict[str, tuple[float, float]]:
    """The training ranges: name -> [min, max], finite numbers with min <= max."""
    _check(isinstance(v, dict), "ranges must be an object")
    out = {}
    for name, pair in v.items():
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(type(x) in (int, float) and np.isfinite(x) for x in pair)
        _check(ok and pair[0] <= pair[1], f"ranges[{name!r}] must be [min, max]")
        out[name] = (float(pair[0]), float(pair[1]))
    return out


def _refuse_non_zip(path: Path, head: bytes) -> None:
    if head.startswith(_PICKLE_HEADS) or path.suffix.lower() in (".joblib", ".pkl", ".pickle"):
        raise PredictorFileError(
            f"{path} is a pickle/joblib predictor (the old format): loading one runs whatever "
            "code it holds, so massact refuses it; re-run `massact report --out RESULTS` on its "
            f"results folder to save it as {PREDICTOR_FILE}"
        )
    raise PredictorFileError(
        f"{path} is not a saved massact predictor (expected the {PREDICTOR_FILE} that "
        "Predictor.save writes)"
    )


def read(path: str | Path) -> dict[str, Any]:
    """The Predictor fields stored in `path` (see `resolve`); PredictorFileError if it is not a
    complete, well-formed massact predictor. Nothing in the file is executed."""
    path = resolve(path)
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise PredictorFileError(f"{path} is {size} bytes: larger than any predictor")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        _refuse_non_zip(path, head)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise PredictorFileError(f"{path}: repeated members in the archive")
            if sum(i.file_size for i in infos) > _MAX_BYTES:
                raise PredictorFileError(f"{path} unpacks to more than {_MAX_BYTES} bytes")
            if _META not in names:
                raise PredictorFileError(f"{path} is a zip, but not a saved massact predictor")
            meta = json.loads(zf.read(_META))
            extra = sorted(set(names) - _allowed_members())
            if extra:
                raise PredictorFileError(f"{path}: unexpected members {extra[:5]}")
            return _fields(meta, set(names), zf.read)
    except PredictorFileError as err:
        msg = str(err)
        raise PredictorFileError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise PredictorFileError(f"{path} is truncated or damaged ({err})") from None
    except Exception as err:  # e.g. metadata that is not JSON, a member that fails to inflate
        raise PredictorFileError(
            f"{path} is damaged or not a massact predictor ({_first_line(err)})"
        ) from None
