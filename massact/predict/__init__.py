"""Prediction: curve parameters from the architecture alone (the paper's Tables 3-4, Figs. 9-10).

Modules: `_config` (a Hugging Face config of any decoder family, read through transformers'
config classes, or explicit dims -> the architecture row; + `_config_hf`, the transformers config
object, and `_config_checks`, the key names and checks both share), `_features` (Table 4
features, their meanings, training ranges, target transforms, model and split names),
`_predictor` (Predictor: predictions and how far they extrapolate, tables, skill, save and load;
`metric_table`), `_store` (the saved predictor.zip: skops / XGBoost JSON models, JSON and
Parquet, no pickle; refuses anything else), `_selection` (splits, cross-validation,
`train_predictors`), `_explain` (SHAP and partial dependence of any predictor-like object).
Imports, one way: `_selection` -> `_predictor` -> `_store`, `_features`, `_config`, `_explain`;
`_config` -> `_config_hf` -> `_config_checks`;
of massact, only massact.curves (PARAM_NAMES, Eq. 9, Eq. 13) and, when writing files,
massact.dataset.atomic_write_bytes. scikit-learn, xgboost, shap, skops on first use.
"""

from ._config import arch_from_config as arch_from_config
from ._features import FEATURES as FEATURES
from ._features import MODELS as MODELS
from ._features import SPLITS as SPLITS
from ._features import TargetTransform as TargetTransform
from ._features import architecture_features as architecture_features
from ._predictor import Predictor as Predictor
from ._predictor import metric_table as metric_table
from ._predictor import predict_from_config as predict_from_config
from ._selection import train_predictors as train_predictors
from ._store import PredictorFileError as PredictorFileError
