""" "Results at a glance" for a chapter: how its run was made, its verdict counts and its misses.

Read from the chapter's ``manifest.json`` (profile, every override, seeds, commit) and ``metrics.json``
/ ``tables/*.csv`` (verdicts). Shown on top of the chapter's page and in its row of the index.

Verdicts in ``metrics.json`` (what :mod:`kdrepro.paper` writes): ``"verdicts"`` is either a count per cell
verdict (``{"reproduced": n, "partially": n, "not": n, …}``) or ``{"cells": {…}, "gains": {…}, "claims":
{…}}``; ``"gains"`` / ``"claims"`` / ``"ordering"`` at the top level are read too (``{"claims": n, "hold":
k}`` for the older claim checks). ``"misses"``: optional rows ``{"what": …, "why": …}``; without it the
misses are the ``verdict == "not"`` rows and the claims that do not hold, read from ``tables/*.csv``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

from kdrepro.book.params import cell_source, parameters_cell, parse_parameters

VERDICT_KINDS = ("cells", "gains", "claims")
SHOWN_MISSES = 10
RUNNER_SET = ("RESULTS_DIR",)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


def _claim_counts(entry: Any) -> dict[str, int] | None:
    if isinstance(entry, Mapping) and "claims" in entry and "hold" in entry:
        return {"hold": int(entry["hold"]), "do not hold": int(entry["claims"]) - int(entry["hold"])}
    if isinstance(entry, Mapping) and all(isinstance(v, int) for v in entry.values()):
        return dict(entry)
    return None


def verdict_counts(metrics: Mapping[str, Any]) -> dict[str, dict[str, int] | None]:
    """``{"cells": counts or None, "gains": …, "claims": …}`` from a chapter's metrics.json."""
    found: dict[str, dict[str, int] | None] = dict.fromkeys(VERDICT_KINDS)
    verdicts = metrics.get("verdicts")
    if isinstance(verdicts, Mapping) and any(k in verdicts for k in VERDICT_KINDS):
        for kind in VERDICT_KINDS:
            found[kind] = _claim_counts(verdicts.get(kind)) if kind == "claims" else verdicts.get(kind)
    elif isinstance(verdicts, Mapping):
        found["cells"] = dict(verdicts)
    if found["gains"] is None and isinstance(metrics.get("gains"), Mapping):
        found["gains"] = _claim_counts(metrics["gains"])
    if found["claims"] is None:
        for key in ("claims", "ordering"):
            counts = _claim_counts(metrics.get(key))
            if counts is not None:
                found["claims"] = counts
                break
    for kind, counts in found.items():
        if counts is not None:
            found[kind] = {k: int(v) for k, v in counts.items() if int(v) > 0}
    return found


def _pct(value: Any) -> str:
    return "" if pd.isna(value) else f" ({100 * float(value):+.1f} %)"


def _label(row: Mapping, keys: tuple[str, ...]) -> str:
    return " ".join(str(row[k]) for k in keys if k in row and pd.notna(row[k]))


def _recorded_miss(miss: Any) -> str:
    if not isinstance(miss, Mapping):
        return str(miss)
    where = f"{miss['table']}: " if miss.get("table") else ""
    verdict = f" ({miss['kind']} {miss['verdict']})" if miss.get("kind") and miss.get("verdict") else ""
    why = f" — {miss['why']}" if miss.get("why") else ""
    return f"{where}{miss.get('what', '')}{verdict}{why}"


def misses(metrics: Mapping[str, Any], folder: Path | None) -> list[str]:
    """One line per miss: a cell or gain judged "not", a claim that does not hold."""
    recorded = metrics.get("misses")
    if isinstance(recorded, list) and recorded:
        ordered = sorted(recorded, key=lambda m: isinstance(m, Mapping) and m.get("verdict") == "partially")
        return [_recorded_miss(m) for m in ordered]
    if folder is None or not (folder / "tables").is_dir():
        return []
    lines: list[str] = []
    for path in sorted((folder / "tables").glob("*.csv")):
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError):
            continue
        why = next((c for c in ("why", "explanation", "note") if c in table), None)
        if "verdict" in table and {"paper", "ours_mean"} <= set(table.columns):
            for row in table[table["verdict"].isin(["not", "partially"])].to_dict("records"):
                line = (
                    f"{path.stem}: {_label(row, ('protocol', 'base', 'probe', 'method', 'metric'))} ({row['verdict']})"
                    f" — ours {row['ours_mean']:.4f} vs paper {row['paper']:.4f}{_pct(row.get('rel_delta'))}"
                )
                lines.append(line + (f"; {row[why]}" if why and pd.notna(row.get(why)) else ""))
        holds = next((c for c in ("ours_holds", "holds") if c in table), None)
        if holds and "claim" in table:
            failed = table[~table[holds].astype(str).str.lower().isin(["true", "1"])]
            for row in failed.to_dict("records"):
                line = (
                    f"{path.stem}: claim “{row['claim']}” does not hold ({_label(row, ('protocol', 'base', 'metric'))})"
                )
                lines.append(line + (f"; {row[why]}" if why and pd.notna(row.get(why)) else ""))
    return sorted(lines, key=lambda line: "(partially)" in line)  # the plain misses first


def _counts_html(counts: dict[str, int] | None) -> str:
    if counts is None:
        return '<span class="missing">not recorded by this run</span>'
    if not counts:
        return "none"
    return " · ".join(
        f'<span class="v v-{html.escape(k.replace(" ", "-"))}">{n} {html.escape(k)}</span>' for k, n in counts.items()
    )


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def overrides_text(
    manifest: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """``{set by: [(name, value)]}`` of every override (``-p`` first, then the profile), without the
    profile's entries that equal the notebook's own value when ``defaults`` (its parameters) are given."""
    overrides = manifest.get("overrides", {})
    cli = overrides.get("cli", {})
    groups = {"-p (command line)": [(k, _value(v)) for k, v in cli.items()]}
    groups[f"profile {manifest.get('profile', '?')}"] = [
        (k, _value(v))
        for k, v in overrides.get("profile", {}).items()
        if k not in cli and (defaults is None or k not in defaults or defaults[k] != v)
    ]
    return {by: rows for by, rows in groups.items() if rows}


def notebook_defaults(folder: Path) -> dict[str, Any] | None:
    """The parameters cell of the stored executed notebook (``<stem>/<stem>.ipynb``), or None."""
    path = folder / f"{folder.name}.ipynb"
    if not path.is_file():
        return None
    cell = parameters_cell(nbformat.read(path, as_version=4))
    return {n: p.value for n, p in parse_parameters(cell_source(cell)).items()} if cell else None


def tree_state(git: Mapping[str, Any]) -> str:
    """How a page names the working tree it ran from (:func:`kdrepro.book.provenance.git_info`)."""
    if git.get("dirty"):
        return "with uncommitted changes"
    entries = git.get("uncommitted_ledger_entries") or 0
    if entries:
        return (f"clean code; {entries} results-ledger {'entry' if entries == 1 else 'entries'} not yet committed, "
                "each as recorded in the manifest")
    return "clean tree"


def run_summary(manifest: Mapping[str, Any]) -> dict[str, str]:
    git = manifest.get("git", {})
    device = manifest.get("device", {})
    dataset = manifest.get("dataset", {})
    return {
        "profile": str(manifest.get("profile", "?")),
        "status": str(manifest.get("status", "not run")),
        "started": str(manifest.get("started", "–")).replace("T", " ").replace("+00:00", " UTC"),
        "duration": fmt_seconds(manifest.get("duration_s")),
        "commit": str(git.get("sha", "unknown"))[:10],
        "dirty": tree_state(git),
        "device": str(device.get("used") or device.get("requested") or "?"),
        "data": (f'{dataset["name"]} (sha256 {str(dataset.get("sha256"))[:12]})'  # plain text: pages escape it
                 if dataset.get("name") else "none: this chapter trains nothing"),
        "seeds": _value(manifest.get("parameters", {}).get("SEEDS", "–")),
        "peak": f"{manifest.get('peak_memory_mib', 0) or 0:.0f} MiB",
    }


def remaining_text(remaining: Mapping[str, Any] | None) -> str | None:
    """One line on what the profile without the command-line overrides still lacks (None: nothing narrowed)."""
    if not remaining:
        return None
    if remaining.get("error"):
        return f"could not be counted ({remaining['error']}); run {remaining['command']}"
    if not remaining["fits"]:
        return "nothing: the results ledger holds every fit of the whole profile"
    return (f"{remaining['fits']} fits of the whole profile (without the command-line overrides) are not in "
            f"the results ledger yet: ≈ {remaining['thread_hours']:.1f} thread-hours "
            f"({remaining['estimate']} timings; {remaining['command']})")


def _remaining_html(remaining: Mapping[str, Any] | None) -> str:
    text = remaining_text(remaining)
    return "" if text is None else f"<tr><th scope='row'>Not yet computed</th><td>{html.escape(text)}</td></tr>\n"


def card_html(
    manifest: Mapping[str, Any],
    metrics: Mapping[str, Any],
    folder: Path | None,
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """The "results at a glance" block on top of a chapter page (HTML)."""
    stem = manifest["stem"]
    run = {k: html.escape(v) for k, v in run_summary(manifest).items()}
    counts = verdict_counts(metrics)
    lines = misses(metrics, folder)
    overrides = overrides_text(manifest, defaults)
    override_html = (
        "".join(
            f"<li><span class='by'>{html.escape(by)}:</span> "
            + " · ".join(f"<code>{html.escape(n)} = {html.escape(v)}</code>" for n, v in rows)
            + "</li>"
            for by, rows in overrides.items()
        )
        if overrides
        else "<li>none: every value is the notebook's own</li>"
    )
    shown, rest = lines[:SHOWN_MISSES], lines[SHOWN_MISSES:]
    miss_html = "".join(f"<li>{html.escape(line)}</li>" for line in shown) or "<li>none</li>"
    if rest:
        miss_html += (
            f"<li><details><summary>{len(rest)} more</summary><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in rest)
            + "</ul></details></li>"
        )
    rows = []
    for name, value in manifest.get("parameters", {}).items():
        by = (
            "-p"
            if name in manifest.get("overrides", {}).get("cli", {})
            else "profile"
            if name in manifest.get("overrides", {}).get("profile", {})
            else "runner"
            if name in RUNNER_SET
            else "notebook"
        )
        shown_value = f"{stem}/" if name in RUNNER_SET else _value(value)
        rows.append(
            f"<tr><td><code>{html.escape(name)}</code></td><td><code>{html.escape(shown_value)}</code></td>"
            f"<td>{by}</td></tr>"
        )
    error = ""
    if manifest.get("error"):
        error = (
            f"<p class='error'><b>This run failed:</b> <code>{html.escape(str(manifest['error'])[:1500])}</code></p>"
        )
    return f"""<section class="glance" aria-labelledby="results-at-a-glance">
<h2 id="results-at-a-glance">Results at a glance</h2>
{error}
<table class="card">
<tr><th scope="row">Run</th><td>profile <b>{run["profile"]}</b>
 · status <b class="s-{run["status"]}">{run["status"]}</b> · {run["started"]}
 · {run["duration"]} · peak memory {run["peak"]} · device {run["device"]}</td></tr>
<tr><th scope="row">Code</th><td>git <code>{run["commit"]}</code> ({run["dirty"]})</td></tr>
<tr><th scope="row">Data</th><td>{run["data"]} · seeds
 <code>{run["seeds"]}</code></td></tr>
<tr><th scope="row">Overrides</th><td><ul class="overrides">{override_html}</ul></td></tr>
{_remaining_html(manifest.get("remaining"))}
<tr><th scope="row">Cells vs paper</th><td>{_counts_html(counts["cells"])}</td></tr>
<tr><th scope="row">Gains over the student</th><td>{_counts_html(counts["gains"])}</td></tr>
<tr><th scope="row">Claims</th><td>{_counts_html(counts["claims"])}</td></tr>
<tr><th scope="row">Misses ({len(lines)})</th><td><ul class="misses">{miss_html}</ul></td></tr>
</table>
<details class="params"><summary>Every parameter of this run ({len(rows)})</summary>
<table><tr><th>parameter</th><th>value</th><th>set by</th></tr>{"".join(rows)}</table></details>
<p class="files">Files: <a href="{stem}/manifest.json">manifest</a> · <a href="{stem}/metrics.json">metrics</a>
 · <a href="{stem}/tables/">tables (CSV)</a> · <a href="{stem}/figures/">figures</a>
 · <a href="{stem}/{stem}.ipynb">executed notebook</a></p>
</section>"""
