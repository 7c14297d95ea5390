"""Display views and figure helpers of kdrepro.report: readable paper-vs-ours tables, "not run in this
profile" instead of a one-point figure, one colour scale for compared heatmaps, axis labels in words."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kdrepro import report


def comparison(metrics, methods=("Teacher", "Student", "RRD"), protocols=("loo_sampled",)) -> pd.DataFrame:
    rows = []
    for protocol in protocols:
        for method in methods:
            for i, metric in enumerate(metrics):
                paper = 0.40 + 0.01 * i
                ours = paper * (1.02 if method != "RRD" else 0.80)
                rows.append(
                    {
                        "dataset": "CiteULike",
                        "protocol": protocol,
                        "base": "BPR",
                        "method": method,
                        "metric": metric,
                        "paper": paper,
                        "ours_mean": ours,
                        "ours_std": 0.001,
                        "n_seeds": 3,
                        "rel_delta": ours / paper - 1,
                        "verdict": "reproduced" if method != "RRD" else "not",
                    }
                )
    return pd.DataFrame(rows)


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", html, re.S)


def test_paper_vs_ours_has_one_row_per_method_and_metrics_as_column_groups():
    view = report.paper_vs_ours_view(comparison(["HR@5", "NDCG@5"]))
    assert len(view.parts) == 1
    html = view.to_html()
    body = [r for r in _rows(html) if "<td" in r]
    assert len(body) == 3, "one row per method"
    assert html.count('colspan="3"') == 2, "one group of three columns (ours, paper, Δ) per metric"
    assert "CiteULike · loo_sampled · BPR" in html, "keys constant over the table move to the caption"
    assert "−" not in html and "-20.0 % ✗" in html and "+2.0 % ✓" in html
    assert "0.4080<br><small>± 0.0010</small>" in html


def test_many_metrics_are_split_by_cutoff_and_protocols_get_a_table_each():
    metrics = [f"{m}@{k}" for k in (5, 10, 20) for m in ("HR", "MRR", "NDCG")]
    view = report.paper_vs_ours_view(comparison(metrics, protocols=("loo_sampled", "loo_full")))
    assert len(view.parts) == 6
    for part in view.parts:
        assert len(part.columns) <= 3 * report.MAX_METRICS_PER_TABLE


def test_one_variant_design_table_is_not_run():
    table = pd.DataFrame(
        {
            "base": ["BPR"],
            "variant": ["DE"],
            "metric": ["HR@5"],
            "ours_mean": [0.4],
            "ours_std": [np.nan],
            "ours_rank": [1],
            "paper": [0.5],
            "paper_rank": [1],
        }
    )
    assert isinstance(report.ranked_view(table), report.NotRun)


def test_a_sweep_with_one_point_is_not_drawn():
    results = pd.DataFrame(
        {
            "method": ["DE", "DE"],
            "base": ["bpr", "bpr"],
            "phi": [0.1, 0.1],
            "metric": ["HR@5", "NDCG@5"],
            "value": [0.4, 0.3],
        }
    )
    shown = report.sweep_plot(results, "phi")
    assert isinstance(shown, report.NotRun) and "not run in this profile" in shown.to_html().lower()
    assert "phi" in shown.what and "1" in shown.what


def test_crowded_sweep_ticks_go_to_a_log_scale():
    results = pd.DataFrame(
        {"method": "DE", "base": "bpr", "phi": [0.05, 0.1, 0.5, 1.0], "metric": "HR@5", "value": [0.3, 0.35, 0.4, 0.45]}
    )
    fig = report.sweep_plot(results, "phi", ["HR@5"])
    assert fig.axes[0].get_xscale() == "log"


def test_recorder_shows_not_run_without_saving(tmp_path):
    recorder = report.RunRecorder(tmp_path)
    shown = recorder.figure("sweep", report.NotRun("nothing"))
    assert isinstance(shown, report.NotRun) and not (tmp_path / "figures").exists()


def test_compared_heatmaps_share_one_colour_scale():
    a = pd.DataFrame([[0.1, 0.2], [0.3, 0.4]])
    b = pd.DataFrame([[0.5, 0.6], [0.7, 0.9]])
    fig = report.heatmaps({"ours: BPR, HR@5": a, "paper: BPR, HR@5": b})
    limits = {ax.collections[0].get_clim() for ax in fig.axes if ax.get_title()}
    assert limits == {(0.1, 0.9)}
    different = report.heatmaps({"loo_full Recall@50": a, "loo_sampled NDCG@10": b})
    assert len({ax.collections[0].get_clim() for ax in different.axes if ax.get_title()}) == 2


def test_single_cell_heatmaps_are_not_run():
    assert isinstance(report.heatmaps({"x HR@5": pd.DataFrame([[0.1]])}), report.NotRun)


@pytest.mark.parametrize(
    "column, label",
    [("valid/NDCG@10", "validation NDCG@10"), ("loss/rrd", "loss: rrd"), ("HR@5", "HR@5"), ("kl_mean", "kl mean")],
)
def test_history_columns_become_words(column, label):
    assert report.axis_label(column) == label


def test_training_panels_wrap_two_per_row():
    from kdrepro import analysis

    histories = pd.DataFrame(
        [
            {
                "base": b,
                "method": m,
                "seed": 0,
                "epoch": e,
                "loss/base": 10 / e,
                "loss/rrd": 5 / e,
                "valid/HR@5": e / 10,
            }
            for b in ("bpr", "neumf")
            for m in ("RRD", "IR-RRD")
            for e in range(1, 4)
        ]
    )
    fig = analysis.training_panels(histories, ["loss/base", "loss/rrd", "valid/HR@5"])
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert fig.get_size_inches()[0] <= 2 * 4.4 + 1e-9, "at most two panels side by side"
    assert [ax.get_title() for ax in shown][:3] == ["bpr · loss: base", "bpr · loss: rrd", "bpr · validation HR@5"]
    assert len(shown) == 6


def test_a_one_cell_panel_beside_a_grid_says_not_run():
    fig = report.heatmaps({"ours: BPR, HR@5": pd.DataFrame([[0.4]]), "paper: BPR, HR@5": pd.DataFrame([[0.1, 0.2]])})
    ours = fig.axes[0]
    assert not ours.collections and "not run in this profile" in ours.texts[0].get_text()
    assert fig.axes[1].collections, "the paper's grid is still drawn"


def test_show_table_fits_the_page_constant_text_to_caption_words_wrap_numbers_do_not():
    table = pd.DataFrame(
        {
            "dataset": ["CiteULike"] * 3,
            "claim": ["SingleCF user_multinomial < ConCF user_multinomial", "a < b", "c < d"],
            "a_mean": [0.12345, 0.5, 0.25],
            "n_seeds": [1, 2, 3],
        }
    )
    html = report.show_table(table).to_html()
    assert "<caption>dataset: CiteULike</caption>" in html and ">dataset</th>" not in html
    assert ">a mean</th>" in html and ">n seeds</th>" in html, "headers in words: they wrap at spaces"
    assert "user_<wbr>multinomial" in html and ">0.1235</td>" in html
    style = html.split("</style>")[0]
    assert re.search(r"td\.col0 \{\s*text-align: left;\s*\}", style), "words wrap when the table needs the room"
    assert re.search(r"th\.col0 \{\s*text-align: left;", style), "a text column's header sits over its text"
    assert re.search(r"td\.col1 \{\s*white-space: nowrap;", style), "numbers never wrap"
    single = report.show_table(table.head(1)).to_html()
    assert "<caption>" not in single and ">dataset</th>" in single, "one row: nothing is constant, all is shown"
    stems = report.show_table(pd.DataFrame({"chapter": ["02_phr", "03_td"], "x": ["0.1 ± 0.01", "0.2 (1)"]}))
    style = stems.to_html().split("</style>")[0]
    assert re.search(r"th\.col0 \{\s*text-align: left;", style), "a stem is a word, digits first or not"
    assert not re.search(r"th\.col1", style), "numbers written as text stay right-aligned"


def test_a_short_wide_table_is_shown_turned():
    table = pd.DataFrame({"teacher": ["MF", "CML"], **{f"metric_{i}": [0.1 * i, 0.2] for i in range(11)}})
    html = report.show_table(table, precision=2).to_html()
    heads = re.findall(r"<th [^>]*>([^<]*)</th>", html)
    assert heads == ["", "MF", "CML"], "one column per row, headed by the row's name"
    assert len(_rows(html)) == 1 + 11 and ">metric 3</td>" in html and ">0.30</td>" in html
    narrow = report.show_table(table.iloc[:, :6]).to_html()
    assert re.findall(r"<th [^>]*>([^<]*)</th>", narrow)[:2] == ["teacher", "metric 0"], "narrow tables stay"


def test_a_timing_table_says_in_its_caption_whether_the_machine_was_idle():
    timed = pd.DataFrame({"phi": [1.0, 0.1], "seconds_all_users": [0.86, 0.48], "other_cores_busy": [0.03, 0.08]})
    assert "otherwise idle machine (other processes: at most 0.08 cores)" in report.show_table(timed).to_html()
    timed.loc[1, "other_cores_busy"] = 1.02
    loaded = report.show_table(timed).to_html()
    assert "⚠ timed while other processes kept up to 1.02 cores busy" in loaded and ">1.0200</td>" in loaded
    assert report.timing_caption(timed.drop(columns="other_cores_busy")) == ""
    assert report.timing_caption(timed.assign(other_cores_busy=float("nan"))) == "", "no reading"


def test_a_figure_is_described_from_what_it_draws_and_the_png_keeps_it(tmp_path):
    rows = [
        {"base": "bpr", "method": m, "phi": phi, "metric": metric, "value": 0.3 + phi / 10, "seed": 0}
        for m in ("Student", "RRD") for phi in (0.1, 0.5) for metric in ("HR@5", "NDCG@5")
    ]
    fig = report.sweep_plot(pd.DataFrame(rows), "phi")
    text = report.describe_figure(fig)
    assert text.startswith("2 panels. (1) bpr · HR@5: test HR@5 against student size φ")
    assert "series: Student, RRD. (2) bpr · NDCG@5: test NDCG@5" in text
    report.write_figure(tmp_path / "f.png", fig)
    assert report.figure_description(tmp_path / "f.png") == text, "non-Latin-1 text survives the PNG"
    axes = {"index": pd.Index([1], name="lambda_de"), "columns": pd.Index([1, 2], name="lambda_rrd")}
    grid = pd.DataFrame([[0.1, 0.2]], **axes)
    heat = report.describe_figure(report.heatmaps({"bpr · HR@5": grid, "neumf · HR@5": grid.iloc[:, :1]}))
    assert heat == (
        "2 panels. (1) bpr · HR@5: heatmap over λ_DE × λ_RRD. (2) neumf · HR@5: not run in this profile: 1 cell."
    )
    assert report.figure_description(tmp_path / "missing.png") is None
    empty = report.training_curves(pd.DataFrame({"epoch": [1]}), "loss")
    assert report.describe_figure(empty) == "no loss recorded", "a panel holding only a message says it"
