"""Chapter 08's scorecard, read from hand-made report folders."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdrepro import scorecard
from kdrepro.book import glance

BLOCK = {"cells": {"reproduced": 5, "partially": 1, "not": 2}, "gains": {"reproduced": 3, "partially": 0, "not": 1},
         "claims": {"reproduced": 4, "partially": 1, "not": 0}}


def write_chapter(root, stem, metrics, fits=None, profile="paper", cli=None):
    folder = root / stem
    (folder / "tables").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps({"profile": profile, "overrides": {"cli": cli or {}}}))
    if fits is not None:
        pd.DataFrame(fits).to_csv(folder / "tables" / "fits.csv", index=False)


def rows(protocol, metric, values, **keys):
    return [{"dataset": "CiteULike", "protocol": protocol, "base": "bpr", "method": method, "seed": seed,
             "metric": metric, "value": value, **keys} for method, seeds in values.items()
            for seed, value in enumerate(seeds)]


@pytest.fixture
def reports(tmp_path):
    write_chapter(tmp_path, "00_data", {"verdicts": {"reproduced": 3, "partially": 1, "not": 0}}, profile="quick",
                  cli={"SEEDS": [0], "EPOCHS": 5})
    results = (rows("loo_sampled", "HR@5", {"Teacher": [0.50, 0.52], "Student": [0.44, 0.46], "RD": [0.45, 0.47]})
               + rows("loo_sampled", "NDCG@5", {"Student": [0.3, 0.3]})
               + rows("loo_sampled", "HR@5", {"RD": [0.1]}, num_topk=50))  # a sweep point: not a main run
    fits = [{"base": "bpr", "method": m, "seed": s, "parameters": p}
            for m, p in (("Teacher", 1000), ("Student", 100), ("RD", 100)) for s in (0, 1)]
    write_chapter(tmp_path, "04_rrd", {"verdicts": {**BLOCK, "tables": {"derrd_table2_main_phi0.1": BLOCK}},
                                       "misses": [{"kind": "gain", "table": "derrd_table2_main_phi0.1",
                                                   "verdict": "not", "what": "BPR RD over the student, HR@5",
                                                   "why": "opposite sign"}],
                                       "results": results}, fits)
    write_chapter(tmp_path, "08_scorecard", {"verdicts": BLOCK})  # chapter 08 never reads itself
    (tmp_path / "index.html").write_text("")
    return scorecard.load_reports(tmp_path)


def test_scorecard_counts_per_chapter_and_table(reports):
    assert [c.stem for c in reports] == ["00_data", "04_rrd"]
    card = scorecard.scorecard(reports).set_index("chapter")
    assert card.loc["04_rrd", ["cells_reproduced", "cells_partially", "cells_not"]].tolist() == [5, 1, 2]
    assert card.loc["04_rrd", "claims_partially"] == 1 and card.loc["04_rrd", "profile"] == "paper"
    # An older report: its flat counts are cells; gains and claims were not recorded.
    assert card.loc["00_data", "cells_reproduced"] == 3 and pd.isna(card.loc["00_data", "gains_not"])
    table = scorecard.readme_table(scorecard.scorecard(reports))
    assert "| 04_rrd | derrd_table2_main_phi0.1 | paper | 5 / 1 / 2 | 3 / 0 / 1 | 4 / 1 / 0 |" in table
    assert "| 00_data | – | quick + 2 overrides | 3 / 1 / 0 | not recorded | not recorded |" in table


def test_misses_and_efficiency_points_by_hand(reports):
    listed = scorecard.misses(reports)
    assert listed[["chapter", "what", "why"]].values.tolist() == [["04_rrd", "BPR RD over the student, HR@5",
                                                                   "opposite sign"]]
    points = scorecard.efficiency_points(reports).set_index("method")
    # Mean HR@5 over the two seeds of the main runs (the K = 50 sweep point is left out), with the fit's size.
    assert points.loc["RD", "value"] == pytest.approx(0.46) and points.loc["RD", "parameters"] == 100
    assert points.loc["Teacher", ["value", "parameters"]].tolist() == [pytest.approx(0.51), 1000]
    assert set(points["metric"]) == {"HR@5"}
    assert set(points["profile"]) == {"paper"} and set(points["chapter"]) == {"04_rrd"}
    figure = scorecard.tradeoff_plot(scorecard.efficiency_points(reports), "loo_sampled")
    assert figure.axes[0].get_xscale() == "log" and figure.axes[0].get_ylabel() == "HR@5 (loo_sampled)"


def test_a_paper_report_is_preferred_and_totals_skip_unrecorded_kinds(reports, tmp_path):
    results = rows("loo_sampled", "HR@5", {"Student": [0.40]})
    quick_first = tmp_path / "quick"
    write_chapter(quick_first, "00_a", {"results": results}, [{"base": "bpr", "method": "Student", "parameters": 7}],
                  profile="quick")
    write_chapter(quick_first, "01_b", {"results": rows("loo_sampled", "HR@5", {"Student": [0.45]})},
                  [{"base": "bpr", "method": "Student", "parameters": 7}], profile="paper")
    point = scorecard.efficiency_points(scorecard.load_reports(quick_first))
    assert point[["chapter", "value"]].values.tolist() == [["01_b", pytest.approx(0.45)]]
    totals = scorecard.totals(scorecard.scorecard(reports))
    assert totals == {"cells: reproduced / partially / not": "8 / 2 / 2 (2 tables)",
                      "gains: reproduced / partially / not": "3 / 0 / 1 (1 tables)",
                      "claims: reproduced / partially / not": "4 / 1 / 0 (1 tables)"}


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{scorecard.README_BEGIN}\nold table\n{scorecard.README_END}\nrest\n")
    scorecard.write_readme_block(readme, "| new |\n")
    assert readme.read_text() == f"# title\n{scorecard.README_BEGIN}\n| new |\n{scorecard.README_END}\nrest\n"
    assert scorecard.write_readme_block("", "x") is None  # no path: nothing written (smoke)
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        scorecard.write_readme_block(bare, "x")


def test_missing_reports_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the chapters first"):
        scorecard.load_reports(tmp_path / "nowhere")


def test_a_report_without_any_verdict_is_listed_with_nothing_counted(tmp_path):
    write_chapter(tmp_path, "05_ir", {"results": []}, profile="quick")
    card = scorecard.scorecard(scorecard.load_reports(tmp_path)).set_index("chapter")
    assert list(card.index) == ["05_ir"] and card.loc["05_ir", ["cells_not", "gains_not", "claims_not"]].isna().all()
    assert "| 05_ir | – | quick | not recorded | not recorded | not recorded |" in scorecard.readme_table(
        scorecard.scorecard(scorecard.load_reports(tmp_path)))


def test_a_table_the_run_left_out_reads_not_run_rather_than_zeros(tmp_path):
    nothing = {kind: {"reproduced": 0, "partially": 0, "not": 0} for kind in scorecard.KINDS}
    write_chapter(tmp_path, "01_de", {"verdicts": {"tables": {"table2": BLOCK, "table4_design": nothing}}})
    table = scorecard.readme_table(scorecard.scorecard(scorecard.load_reports(tmp_path)))
    assert "| 01_de | table4_design | paper | not run in this profile | not run in this profile | " \
           "not run in this profile |" in table
    assert "| 01_de | table2 | paper | 5 / 1 / 2 | 3 / 0 / 1 | 4 / 1 / 0 |" in table
    assert scorecard.totals(scorecard.scorecard(scorecard.load_reports(tmp_path)))[
        "cells: reproduced / partially / not"] == "5 / 1 / 2 (1 tables)"


def test_a_single_override_is_named_in_the_singular(tmp_path):
    write_chapter(tmp_path, "07_hetcomp", {"verdicts": BLOCK}, cli={"THREADS": 1})
    (tmp_path / "index.html").write_text("")
    (report,) = scorecard.load_reports(tmp_path)
    assert report.profile == "paper + 1 override"


def test_verdict_totals_sum_the_recorded_tables_for_the_glance_and_index(reports):
    totals = scorecard.verdict_totals(scorecard.scorecard(reports))
    # Cells: 00_data's flat counts (3 / 1 / 0) plus 04_rrd's table (5 / 1 / 2); gains and claims only 04_rrd's.
    assert totals == {"cells": {"reproduced": 8, "partially": 2, "not": 2},
                      "gains": {"reproduced": 3, "partially": 0, "not": 1},
                      "claims": {"reproduced": 4, "partially": 1, "not": 0}}
    assert scorecard.verdict_totals(scorecard.scorecard([])) == dict.fromkeys(scorecard.KINDS)
    assert glance.verdict_counts({"verdicts": totals})["cells"] == {"reproduced": 8, "partially": 2, "not": 2}
