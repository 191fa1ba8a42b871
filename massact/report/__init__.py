"""The report: the paper's tables and figures from a dataset, its fits and predictors.

Modules: `_provenance` (versions, git commit, device, CPU kernels: for the report and the
benchmarks), `_figures` (Figs. 2-8), `_tables` (markdown / HTML tables, Tables 1, 2, 3, 5,
fit_frame), `_document` (the results folder: report.md and report.html), `_doc_builder`
(the markdown / HTML document builder with its table of contents), `_predictor_section` (the
predictor's summary, feature legend and SHAP / partial-dependence figures), `_location` (where
the top1 sits).
Imports: every stage above it (dataset, curves, predict; curves and predict on first use, so
that importing the report stays cheap), matplotlib.
"""

from ._document import write_report as write_report
from ._provenance import base_provenance as base_provenance
from ._provenance import cpu_kernels as cpu_kernels
from ._provenance import device_description as device_description
from ._provenance import git_commit as git_commit
from ._provenance import package_versions as package_versions
from ._tables import fit_frame as fit_frame
from ._tables import html_table as html_table
from ._tables import markdown_table as markdown_table
