"""The "results at a glance" card: what it says about a run, as text a reader sees (not markup)."""

from __future__ import annotations

from kdrepro.book import glance

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
