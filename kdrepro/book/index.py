"""The index page: one row per chapter with its own run (profile, overrides, seeds, commit), verdict
counts, misses and headline, and a warning when ledger entries the page read have changed since (refits),
rendered from ``templates/index.html.j2``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

from kdrepro.book import glance
from kdrepro.jobs import Ledger

TEMPLATES = Path(__file__).resolve().parent / "templates"
STAGING_FAILED = ".staging/failed"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
)


def _headline(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def chapter_row(reports_dir: Path, stem: str, title: str | None = None) -> dict:
    folder = reports_dir / stem
    manifest = glance.read_json(folder / "manifest.json") or {}
    metrics = glance.read_json(folder / "metrics.json") or {}
    attempt = glance.read_json(reports_dir / STAGING_FAILED / stem / "manifest.json") or {}
    later_failure = None
    if attempt.get("status") == "failed" and attempt.get("started", "") > manifest.get("started", ""):
        later_failure = {
            "started": attempt.get("started"),
            "error": (attempt.get("error") or "").splitlines()[0][:400] if attempt.get("error") else "",
            "href": f"{STAGING_FAILED}/{stem}.html",
        }
    misses = glance.misses(metrics, folder) if manifest else []
    return {
        "stem": stem,
        "number": stem[:2],
        "title": re.sub(rf"^{stem[:2]}\s*·\s*", "", manifest.get("title") or title or stem),
        "href": f"{stem}.html" if (reports_dir / f"{stem}.html").exists() else None,
        "has_manifest": bool(manifest),
        "run": glance.run_summary(manifest) if manifest else None,
        "overrides": glance.overrides_text(manifest, glance.notebook_defaults(folder)) if manifest else {},
        "error": (manifest.get("error") or "").splitlines()[0][:400] if manifest.get("error") else "",
        "verdicts": glance.verdict_counts(metrics) if manifest else {},
        "misses": misses,
        "remaining": glance.remaining_text(manifest.get("remaining")),
        "headline": [
            (k, _headline(v)) for k, v in (manifest.get("headline") or {}).items() if not k.startswith("verdicts")
        ],
        "later_failure": later_failure,
        "ledger_changed": Ledger().changed(manifest.get("ledger_entries", {})),
    }


def write(reports_dir: Path, stems: Sequence[str], titles: Mapping[str, str] | None = None) -> Path:
    """Write ``<reports>/index.html`` atomically (0644)."""
    page = _ENV.get_template("index.html.j2").render(
        chapters=[chapter_row(reports_dir, stem, (titles or {}).get(stem)) for stem in stems],
        css=(TEMPLATES / "kdrepro" / "static" / "kdrepro.css").read_text(encoding="utf-8"),
    )
    path = reports_dir / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
