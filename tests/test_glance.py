"""The "results at a glance" card: what it says about a run, as text a reader sees (not markup)."""

from __future__ import annotations

import subprocess

from kdrepro.book import glance, provenance

MANIFEST = {"stem": "03_x", "profile": "paper", "status": "ok", "started": "2026-12-02T12:00:00+00:00",
            "duration_s": 60.0, "git": {"sha": "abcdef1234567", "dirty": False}, "device": {"used": "cpu"},
            "dataset": {"name": "citeulike-t", "sha256": "0123456789abcdef"}, "parameters": {"SEEDS": [0, 1, 2]},
            "overrides": {"profile": {}, "cli": {"MODELS": ["bpr"]}}, "peak_memory_mib": 100.0,
            "remaining": {"fits": 12, "thread_hours": 3.25, "estimate": "ledger",
                          "command": "python run_all.py --profile paper --only 03_x --plan"}}


def test_the_card_shows_the_dataset_as_text_and_what_is_not_yet_computed():
    card = glance.card_html(MANIFEST, {}, None)
    assert "citeulike-t (sha256 0123456789ab)" in card
    assert "&lt;" not in card, "no markup escaped into visible text"
    assert "Not yet computed" in card and "12 fits of the whole profile" in card and "≈ 3.2 thread-hours" in card


def test_remaining_text_for_a_complete_ledger_an_error_and_no_narrowing():
    assert glance.remaining_text(None) is None
    assert "holds every fit" in glance.remaining_text({**MANIFEST["remaining"], "fits": 0})
    failed = glance.remaining_text({"error": "KeyError: x", "command": "python run_all.py --plan"})
    assert "could not be counted (KeyError: x)" in failed


def test_the_card_tells_uncommitted_code_from_uncommitted_ledger_entries():
    assert glance.tree_state({"dirty": False, "uncommitted_ledger_entries": 0}) == "clean tree"
    assert glance.tree_state({"dirty": True, "uncommitted_ledger_entries": 3}) == "with uncommitted changes"
    assert glance.tree_state({"dirty": False, "uncommitted_ledger_entries": 1}).startswith(
        "clean code; 1 results-ledger entry not yet committed")
    assert "2 results-ledger entries" in glance.tree_state({"dirty": False, "uncommitted_ledger_entries": 2})
    assert glance.tree_state({"dirty": False}) == "clean tree", "manifests written before the count existed"


def test_git_info_counts_ledger_entries_apart_from_code_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text("{}")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "page.html").write_text("old")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert provenance.git_info(tmp_path) == {"sha": provenance.git_info(tmp_path)["sha"], "dirty": False,
                                             "uncommitted_ledger_entries": 0}
    (tmp_path / "reports" / "page.html").write_text("new")  # the runner's own output
    (tmp_path / "results" / "a.json").write_text('{"refits": []}')  # a refit, not yet committed
    (tmp_path / "results" / "b.json").write_text("{}")  # a new fit: untracked, counted all the same
    info = provenance.git_info(tmp_path)
    assert (info["dirty"], info["uncommitted_ledger_entries"]) == (False, 2)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_info(tmp_path)["dirty"] is True
