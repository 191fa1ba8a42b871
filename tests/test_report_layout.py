"""The report's layout (issue 13): a table of contents whose links all land, every model in
Figs. 3-4, fit statuses by name, no raw markdown or Python reprs in the HTML, SHAP and partial
dependence as one figure per kind, legible labels, and a legend for every feature name.

Built once from a constructed five-model dataset (test_report's builder) through the real
fitter, predictor and report writer; the figures each drawing function makes are recorded.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_report import build_dataset

from massact import dataset as _dataset
from massact.curves import FitStatus
from massact.predict import train_predictors
from massact.predict._features import EXTRA, MEANINGS
from massact.report import _doc_builder, _document, _figures, base_provenance

ARCHS = {
    "m-a": (3, 32, 2, 128, 40_000),
    "m-b": (4, 64, 4, 256, 200_000),
    "m-c": (6, 64, 2, 128, 300_000),
    "m-d": (5, 96, 4, 384, 500_000),
    "m-e": (8, 128, 4, 512, 900_000),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(results folder, predictor, {png name: (figure, tick label sizes)}) of one report."""
    from massact.curves._fit import fit_trajectories
    from massact.predict import _explain

    out = tmp_path_factory.mktemp("layout")
    build_dataset(out / "dataset", archs=ARCHS)
    dataset = _dataset.load_dataset(out / "dataset")
    traj = _dataset.load_trajectories(dataset)
    fit = fit_trajectories(traj.t, traj.y, traj.mask)
    pred = train_predictors(traj.keys, fit.params, fit.ok(), degenerate=fit.degenerate, seed=0)
    drawn: dict = {}

    def sizes(fig) -> list[float]:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        labels = [t for ax in axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels())]
        return [t.get_fontsize() for t in labels if t.get_text()]

    def record(fig, path):
        drawn[_name(path)] = (fig, sizes(fig), fig.get_size_inches().copy())
        return save(fig, path)

    def record_plt(plt, path, title):
        fig = plt.gcf()
        drawn[_name(path)] = (None, sizes(fig), fig.get_size_inches().copy())
        return save_plt(plt, path, title)

    save, save_plt = _figures.save_figure, _explain._save
    prov = base_provenance(seed=0, notes=["note with `code`"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_figures, "save_figure", record)
        mp.setattr(_explain, "_save", record_plt)
        _document.write_report(out, dataset, traj, fit, None, pred, prov)
    return out, pred, drawn, fit


def _name(path) -> str:
    return str(path).rsplit("/", 1)[-1]


def _outside_pre(page: str) -> str:
    """The page without <pre> blocks (the provenance JSON), <style> and embedded images."""
    page = re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page)


def test_table_of_contents_links_land_in_markdown_and_html(report):
    out = report[0]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert md.index("## Contents") < md.index("## Fits of Eq. 9")
    links = re.findall(r"\]\(#([^)]+)\)", md.split("## Contents", 1)[1].split("\n\n<a id=")[0])
    anchors = re.findall(r'<a id="([^"]+)"></a>', md)
    assert len(anchors) == len(set(anchors)) and links and set(links) <= set(anchors)
    for want in ("Fits of Eq. 9", "Predicting the curve", "Figures", "Provenance", "Table 1",
                 "Fig. 3", "Fig. 9a/10", "Features"):  # fmt: skip
        entries = [x for x in md.splitlines() if x.lstrip().startswith("- [")]
        assert any(want in x for x in entries), want
    nav = re.search(r'<nav id="contents">(.*?)</nav>', page, flags=re.S).group(1)
    hrefs = re.findall(r'href="#([^"]+)"', nav)
    ids = re.findall(r' id="([^"]+)"', page)
    assert hrefs == links and len(ids) == len(set(ids)) and set(hrefs) <= set(ids)
    assert nav.count("<ul>") == nav.count("</ul>") and nav.count("<li>") == nav.count("</li>")
    assert "<ul><ul>" not in nav  # a nested list sits inside its parent's item


def test_every_model_is_in_figs_3_and_4(report):
    out, _, drawn, _ = report
    fig3 = drawn["fig3_top_activations.png"][0]
    titles = [ax.get_title() for ax in fig3.axes if ax.get_visible() and ax.get_title()]
    assert [t.split(":")[0] for t in titles] == list(ARCHS)
    fig4 = sorted(p.name for p in (out / "figures").glob("fig4_*.png"))
    assert fig4 == [f"fig4_trajectories_{m}.png" for m in ARCHS]
    md = (out / "report.md").read_text()
    for m in ARCHS:
        assert f"during training, {m}, one panel per layer." in md
    assert "a panel per model (all 5)" in md


def test_statuses_by_name_and_no_raw_markdown_or_reprs_in_html(report):
    out, _, _, fit = report
    page = (out / "report.html").read_text()
    body = _outside_pre(page)
    assert "`" not in body and "**" not in body
    reprs = r"\{'|\{&#x27;|\{\d+:"  # a dict's repr, as str() of it would show
    assert not re.search(reprs, body), re.search(rf".{{40}}({reprs}).{{40}}", body)
    assert "<code>code</code>" in body
    for label, n in fit.status_counts().items():
        status = next(s for s in FitStatus if s.label == label)
        row = f"<tr><td>{label}</td><td>{n}</td><td>{status.message}</td></tr>"
        assert row.replace("'", "&#x27;") in body or row in body, label
    assert "Trained on " in body and "curves" in body


def test_shap_and_pdp_are_one_figure_per_kind(report):
    out, pred, drawn, _ = report
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    shown = set(re.findall(r"\]\(figures/([^)]+\.png)\)", md))
    predictor_figs = {n for n in shown if n.startswith(("shap", "pdp"))}
    assert predictor_figs == {"shap_beeswarm.png", "shap_importance.png", "pdp.png",
                              "shap_waterfall_K.png"}  # fmt: skip
    assert page.count("data:image/png;base64,") == len(shown)
    assert not list((out / "figures").glob("shap_beeswarm_*.png"))  # no per-parameter copies
    names = {_name(p) for p in drawn}
    assert {"shap_beeswarm.png", "pdp.png"} <= names


def test_labels_are_legible(report):
    _, _, drawn, _ = report
    for name in ("fig5_peak_heatmaps.png", "fig3_top_activations.png", "shap_beeswarm.png",
                 "shap_importance.png", "pdp.png"):  # fmt: skip
        _, ticks, (width, _) = drawn[name]
        assert ticks and min(ticks) >= 9.5, (name, min(ticks))
        # drawn near the page's width, so that the HTML does not shrink the labels much
        assert width <= 17, (name, width)
    assert drawn["fig5_peak_heatmaps.png"][2][0] <= 12


def test_every_feature_name_is_explained(report):
    out, pred, _, _ = report
    md = (out / "report.md").read_text()
    legend = md.split("**Features: what each name means", 1)[1].split("\n\n<a id=")[0]
    lines = [x for x in legend.splitlines() if x.startswith("| ")][1:]  # after the header
    rows = {line.split(" | ")[0].lstrip("| ") for line in lines}
    assert set(pred.features) | set(EXTRA) <= rows
    for name in rows:
        assert MEANINGS[name] in legend
    csv = (out / "tables" / "features.csv").read_text()
    assert "training min" in csv and "l*L" in csv
    lo, hi = pred.ranges["L"]
    assert re.search(rf"\| L \| [^|]+ \| yes \| {lo:g} \| {hi:g} \|", legend)


def test_kept_models_whole_model_r2_is_in_the_report(report):
    out, pred, _, _ = report
    md = (out / "report.md").read_text()
    skill = pred.skill()
    for p, row in skill.iterrows():
        r2 = row["model_split_r2"]
        want = "–" if np.isnan(r2) else f"{r2:.3f}"
        assert f"| {p} | {row['model']} | {want} |" in md


def test_inline_html_renders_code_and_bold():
    assert _doc_builder.inline_html("a `x<y` **b**") == "a <code>x&lt;y</code> <b>b</b>"
