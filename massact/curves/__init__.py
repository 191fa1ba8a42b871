"""Curves: the paper's Eq. 9/14 fitted to every trajectory in one batched JAX call.

Modules: `_formulas` (Eq. 9, 13, 14, the parameter names and the step-response rivals: the
only home of each formula), `_normalise` (the per-curve normalisation and its inverse, shared
by every fitter), `_core` (the jitted per-curve solver: the first round), `_refine` (its later
rounds and stopping test), `_settings` (FitSettings: the fitter's knobs and compile-cache key),
`_chunks` (shape buckets, the compiled-function cache, the chunk runner), `_result`
(FitResult, FitStatus, information_criteria), `_fit` (fit_trajectories), `_scipy_recipe` (the
paper's scipy recipe: the oracle and baseline), `_hypotheses` (Table 5's model comparison),
`_corpus` (the benchmark corpus: sets of curves the fitter was not tuned on).
Imports: numpy, scipy, pandas, JAX; nothing else of massact.
"""

from ._corpus import CORPUS_SETS as CORPUS_SETS
from ._corpus import corpus_curves as corpus_curves
from ._fit import fit_trajectories as fit_trajectories
from ._formulas import PARAM_NAMES as PARAM_NAMES
from ._formulas import REPARAM_NAMES as REPARAM_NAMES
from ._formulas import curve as curve
from ._formulas import t_peak as t_peak
from ._hypotheses import HYPOTHESES as HYPOTHESES
from ._hypotheses import fit_hypotheses as fit_hypotheses
from ._result import FitResult as FitResult
from ._result import FitStatus as FitStatus
from ._result import information_criteria as information_criteria
from ._settings import FitSettings as FitSettings
