"""The report: the paper's tables and figures from a dataset, its fits and predictors.

Modules: `_provenance` (versions, git commit, device: for the report and the benchmarks),
`_figures` (Figs. 2-8), `_document` (tables, report.md and report.html).
Imports: every stage above it (dataset, curves, predict), matplotlib.
"""

from ._document import fit_frame as fit_frame
from ._document import markdown_table as markdown_table
from ._document import write_report as write_report
from ._provenance import base_provenance as base_provenance
from ._provenance import device_description as device_description
from ._provenance import git_commit as git_commit
from ._provenance import package_versions as package_versions
