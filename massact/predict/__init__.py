"""Prediction: curve parameters from the architecture alone (the paper's Tables 3-4, Figs. 9-10).

Modules: `_config` (an HF config.json -> the architecture row), `_models` (features, target
transforms, model selection, the saved Predictor), `_explain` (SHAP and partial dependence).
Imports: massact.curves (parameter names, Eq. 13); scikit-learn, xgboost, shap.
"""

from ._config import arch_from_config as arch_from_config
from ._models import FEATURES as FEATURES
from ._models import Predictor as Predictor
from ._models import architecture_features as architecture_features
from ._models import predict_from_config as predict_from_config
from ._models import train_predictors as train_predictors
