#!/usr/bin/env python
"""The table of contents: run the chapter notebooks under a profile and render reports/.

    python run_all.py                          # every notebook, profile "quick"
    python run_all.py --profile smoke          # synthetic data, seconds per notebook (the tests)
    python run_all.py --profile paper --only 00,01 -p SEEDS=[0,1,2,3,4]
    python run_all.py --list                   # notebooks and their parameters

For each notebook, in the order of NOTEBOOKS: resolve its parameters (notebook defaults ← profile ←
``-p`` overrides, every name and type checked against the notebook's parameters cell *before* anything
runs), skip it when nothing it depends on changed since its last successful run (``--force`` runs it
anyway), execute it with papermill in the ``kdrepro`` kernel, render it to HTML without code, and write
its manifest. A failed notebook is rendered too; the run goes on and exits non-zero at the end.

Output (``--reports-dir``, default ``reports/``)::

    index.html                    every chapter with status and headline metrics
    manifest.json                 this run + the latest manifest of every notebook
    <stem>.html                   the rendered report (no code cells)
    <stem>/manifest.json          parameters, profile, git SHA, versions, dataset sha256, device, times,
                                  peak memory, input hash
    <stem>/<stem>.ipynb           the executed notebook (progress output coalesced)
    <stem>/metrics.json, config.json, tables/*.csv, figures/*.png    written by the notebook
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import tokenize
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
NOTEBOOKS_DIR = ROOT / "notebooks"
REPORTS_DIR = ROOT / "reports"
KERNEL = "kdrepro"

# The chapters, in reading order (stems of notebooks/<stem>.ipynb).
NOTEBOOKS: list[str] = [
    "00_data_protocols_teachers",
    "01_distillation_experts",
    "02_personalized_hint_regression",
    "03_topology_distillation",
    "04_relaxed_ranking_distillation",
    "05_item_side_ranking_regularization",
]

PACKAGES = (
    "kdrepro",
    "torch",
    "numpy",
    "pandas",
    "papermill",
    "nbconvert",
    "nbclient",
    "ipykernel",
    "matplotlib",
    "seaborn",
    "tqdm",
)
SET_BY_RUNNER = ("RESULTS_DIR",)
STAGING = ".staging"  # under the reports folder: runs in progress, and failed runs that kept a good report
# Run inside every kernel before the notebook: plain-text tqdm bars (JupyterLab keeps its widget bars),
# whose carriage-return refreshes the renderer collapses to each bar's final state.
KERNEL_STARTUP = (
    "import tqdm.auto, tqdm.std; tqdm.auto.tqdm = tqdm.std.tqdm; tqdm.auto.trange = tqdm.std.trange"
)


class ParameterError(ValueError):
    """A parameter override names no declared parameter or has the wrong type."""


# --------------------------------------------------------------------------------------------------
# Parameters: parse, validate, resolve
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    value: Any
    comment: str = ""


def _read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def parameters_cell(nb: dict) -> dict | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            return cell
    return None


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """``NAME = literal  # meaning`` lines → ``{NAME: Parameter}``; anything else is an error."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParameterError(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})") from None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    found: dict[str, Parameter] = {}
    for node in tree.body:
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            raise ParameterError(
                f"{where}, line {node.lineno}: only 'NAME = literal  # meaning' lines are allowed "
                f"(found {ast.get_source_segment(source, node)!r})"
            )
        name = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(
                f"{where}, line {node.lineno}: {name} must be a plain literal, not "
                f"{ast.get_source_segment(source, node.value)!r}"
            ) from None
        if name in found:
            raise ParameterError(f"{where}, line {node.lineno}: {name} is assigned twice")
        comment = comments.get(node.end_lineno or node.lineno, "")
        if "=" in comment:
            # papermill's own parser cannot read such a line and silently ignores overrides of it.
            raise ParameterError(
                f"{where}, line {node.lineno}: the comment of {name} contains '=', which papermill cannot "
                "parse (overrides of it would be ignored); reword it, e.g. 'x: 2' or 'x is 2'"
            )
        found[name] = Parameter(name, value, comment)
    return found


def declared_parameters(path: Path) -> dict[str, Parameter]:
    cell = parameters_cell(_read_notebook(path))
    if cell is None:
        raise ParameterError(f"{path}: no code cell tagged 'parameters'")
    return parse_parameters(_source(cell), f"{Path(path).name}: parameters cell")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _element_type(values: Iterable[Any]) -> type | None:
    types = {type(v) for v in values}
    if types <= {int, float} and float in types:
        return float
    return types.pop() if len(types) == 1 else None


def _matches(value: Any, declared: Any) -> bool:
    if declared is None:
        return True
    if isinstance(declared, bool):
        return isinstance(value, bool)
    if isinstance(declared, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(declared, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(declared, str):
        return isinstance(value, str)
    if isinstance(declared, list | tuple):
        if not isinstance(value, list | tuple):
            return False
        element = _element_type(declared)
        return element is None or all(_matches(v, element()) for v in value)
    if isinstance(declared, dict):
        if not isinstance(value, dict):
            return False
        element = _element_type(declared.values())
        return element is None or all(_matches(v, element()) for v in value.values())
    return type(value) is type(declared)


def check_value(name: str, value: Any, declared: dict[str, Parameter], source: str) -> Any:
    """``value`` if it suits the declared parameter ``name`` (ints widen to float), else ParameterError."""
    if name in SET_BY_RUNNER:
        raise ParameterError(f"{source}: {name} is set by run_all.py (use --reports-dir)")
    if name not in declared:
        raise ParameterError(f"{source}: unknown parameter {name!r}; declared: {', '.join(declared)}")
    expected = declared[name].value
    if not _matches(value, expected):
        shape = _type_name(expected)
        if isinstance(expected, list | tuple | dict) and expected:
            element = _element_type(expected.values() if isinstance(expected, dict) else expected)
            shape += f" of {element.__name__}" if element else ""
        raise ParameterError(
            f"{source}: {name} must be of type {shape}, like the notebook's {expected!r}, got {value!r} "
            f"({_type_name(value)})"
        )
    if isinstance(expected, float) and isinstance(value, int):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def parse_override(text: str) -> tuple[str | None, str, str]:
    """``[SCOPE:]KEY=VALUE`` → (scope, key, raw value); SCOPE selects notebooks by stem prefix."""
    if "=" not in text:
        raise ParameterError(f"-p {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    scope = None
    if ":" in key:
        scope, key = key.split(":", 1)
    key = key.strip()
    if not key.isidentifier():
        raise ParameterError(f"-p {text!r}: {key!r} is not a parameter name")
    return scope, key, raw


def coerce(raw: str, declared: Parameter | None) -> Any:
    """``ast.literal_eval(raw)``; the raw text itself only where the parameter is declared a str."""
    wants_str = declared is not None and isinstance(declared.value, str)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if wants_str:
            return raw
        raise ParameterError(
            f"-p {declared.name if declared else ''}={raw}: {raw!r} is not a Python literal "
            f"(quote strings, write lists as [0, 1])"
        ) from None
    return raw if wants_str and not isinstance(value, str) else value


# --------------------------------------------------------------------------------------------------
# Plan: which notebooks, with which parameters (all validated before anything runs)
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    stem: str
    path: Path
    declared: dict[str, Parameter]
    parameters: dict[str, Any]  # final values passed to papermill
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"profile": …, "cli": …}


def select(stems: Sequence[str], only: Sequence[str]) -> list[str]:
    tokens = [t.strip() for item in only for t in item.split(",") if t.strip()]
    if not tokens:
        return list(stems)
    chosen = set()
    for token in tokens:
        hits = [s for s in stems if s == token or s.startswith(token)]
        if not hits:
            raise ParameterError(f"--only {token!r} matches no notebook; notebooks: {', '.join(stems)}")
        chosen.update(hits)
    return [s for s in stems if s in chosen]


def plan(
    stems: Sequence[str],
    notebooks_dir: Path,
    reports_dir: Path,
    profile: str,
    params: Sequence[str] = (),
) -> list[Job]:
    """Resolve and validate the parameters of every selected notebook; raise ParameterError on any problem."""
    from kdrepro import profiles

    if profile not in profiles.PROFILES:
        raise ParameterError(f"--profile {profile!r}: choose one of {', '.join(profiles.PROFILES)}")
    parsed = [parse_override(p) for p in params]
    jobs: list[Job] = []
    used: set[int] = set()
    for stem in stems:
        path = notebooks_dir / f"{stem}.ipynb"
        if not path.is_file():
            raise ParameterError(f"{path} does not exist (listed in run_all.NOTEBOOKS)")
        declared = declared_parameters(path)
        from_profile = {
            k: check_value(k, v, declared, f"profile {profile!r} of {stem}")
            for k, v in profiles.overrides(stem, profile, declared).items()
        }
        from_cli: dict[str, Any] = {}
        for index, (scope, key, raw) in enumerate(parsed):
            if scope is not None and not stem.startswith(scope):
                continue
            if key not in declared and scope is None and key not in SET_BY_RUNNER:
                continue  # a global -p applies to the notebooks that declare it (checked below)
            used.add(index)
            from_cli[key] = check_value(
                key, coerce(raw, declared.get(key)), declared, f"-p {key}={raw} ({stem})"
            )
        values = {name: p.value for name, p in declared.items()}
        values.update(from_profile)
        values.update(from_cli)
        if "RESULTS_DIR" in declared:
            values["RESULTS_DIR"] = str((reports_dir / stem).resolve())
        jobs.append(Job(stem, path, declared, values, {"profile": from_profile, "cli": from_cli}))
    for index, (scope, key, raw) in enumerate(parsed):
        if index not in used:
            if key in SET_BY_RUNNER:
                raise ParameterError(f"-p {key}: {key} is set by run_all.py (use --reports-dir)")
            where = f"notebooks matching {scope!r}" if scope else "the selected notebooks"
            known = sorted({n for job in jobs for n in job.declared})
            raise ParameterError(
                f"-p {key}={raw}: no parameter {key!r} in {where}; known: {', '.join(known)}"
            )
    return jobs


# --------------------------------------------------------------------------------------------------
# Provenance: git, versions, hashes, dataset, device, memory
# --------------------------------------------------------------------------------------------------


def git_info(root: Path = ROOT) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    # The rendered reports are this script's output, not an input: their changes do not make a run dirty.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports")
    return {"sha": sha or "unknown", "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_hash(root: Path = ROOT) -> str:
    """sha256 over the package's sources and data files (what a notebook's results depend on)."""
    digest = hashlib.sha256()
    package = root / "kdrepro"
    files = sorted(
        p
        for p in package.rglob("*")
        if p.is_file() and p.suffix in (".py", ".csv") and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_DATASETS: dict[tuple, dict] = {}


def dataset_info(parameters: dict) -> dict:
    """Name and content sha256 of the notebook's ``DATASET`` (loaded as the notebook will load it)."""
    name = parameters.get("DATASET")
    if not isinstance(name, str):
        return {"name": None}
    key = (name, parameters.get("MIN_USER_INTERACTIONS", 0))
    if key not in _DATASETS:
        try:
            from kdrepro import data

            loaded = data.load(name, min_user_interactions=key[1])
            info = {
                "name": name,
                "sha256": loaded.sha256,
                **{k: v for k, v in loaded.stats().items() if k != "dataset"},
            }
            raw = data.REMOTE_FILES.get(name, {}).get("users.dat")
            if raw is not None:
                info["raw_sha256"] = {"users.dat": raw.sha256}
        except Exception as exc:  # the notebook will fail on it and say why; the manifest records it
            info = {"name": name, "sha256": None, "error": f"{type(exc).__name__}: {exc}"}
        _DATASETS[key] = info
    return _DATASETS[key]


_DEVICE: dict | None = None


def device_info() -> dict:
    global _DEVICE
    if _DEVICE is None:
        info = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "system": platform.system()}
        try:
            import torch

            info["cuda_available"] = torch.cuda.is_available()
            info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception as exc:
            info["cuda_available"] = f"unknown ({type(exc).__name__})"
        _DEVICE = info
    return _DEVICE


class PeakMemory:
    """Peak resident memory (MiB) of this process's children (the kernel) while the block runs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Rendering: coalesced progress output, no code, a run card on top
# --------------------------------------------------------------------------------------------------

_CR = re.compile(r"[^\n]*\r(?=[^\n])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"\d+/\d+ \[[\d:<?]+")  # tqdm's "n/total [elapsed<remaining" part


def collapse_progress(text: str) -> str:
    """Keep what a terminal would finally show: the last state of every ``\\r``-refreshed line."""
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    text = _CR.sub("", text)
    lines = [line.rstrip("\r").rstrip() for line in text.split("\n")]
    kept = [line for i, line in enumerate(lines) if line or i == len(lines) - 1]
    return "\n".join(kept)


def _widget_text(data: dict, state: dict) -> str | None:
    """A tqdm widget bar's final state as text, from the stored widget state (None if unavailable)."""
    view = data.get("application/vnd.jupyter.widget-view+json", {})
    box = state.get(view.get("model_id"), {}).get("state", {})
    children = [
        state.get(str(c).replace("IPY_MODEL_", ""), {}).get("state", {}) for c in box.get("children", [])
    ]
    bars = [c for c in children if "max" in c and "value" in c]
    texts = [c.get("value", "") for c in children if c.get("_model_name") == "HTMLModel"]
    if not bars:
        return None
    bar = bars[0]
    pct = 100 * bar["value"] / bar["max"] if bar.get("max") else 0
    left, right = (texts + ["", ""])[:2]
    return html.unescape(re.sub(r"<[^>]+>", "", f"{left} {pct:3.0f}% {right}")).strip()


def clean_outputs(nb) -> None:
    """Merge each run of stream outputs per stream, collapse progress refreshes, turn widget bars to text."""
    widgets = (
        nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    )
    import nbformat

    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.get("outputs"):
            continue
        merged: list = []
        block: dict[str, Any] = {}
        for out in cell.outputs:
            if out.output_type == "stream":
                if out.name in block:
                    block[out.name].text += out.text
                else:
                    block[out.name] = out
                    merged.append(out)
                continue
            block = {}
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                text = _widget_text(data, widgets)
                if text:
                    merged.append(nbformat.v4.new_output("stream", name="stderr", text=text + "\n"))
                continue
            merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = collapse_progress(out.text)
                lines = [line for line in out.text.splitlines() if line.strip()]
                if out.name == "stderr" and lines and all(_BAR.search(line) for line in lines):
                    out.name = "stdout"  # a progress bar, not an error: no red background
        cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours} h {minutes:02d} min"
        if hours
        else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")
    )


def run_card(manifest: dict) -> str:
    """Markdown shown under the title of every rendered report: how this run was made."""
    stem = manifest["stem"]
    git = manifest.get("git", {})
    sha = git.get("sha", "unknown")
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    dataset = manifest.get("dataset", {})
    lines = [
        f"> **This report** comes from `run_all.py --profile {manifest['profile']}` · status "
        f"**{manifest['status']}** · {manifest.get('started', '?')} · "
        f"{_fmt_seconds(manifest.get('duration_s'))} · "
        f"peak memory {manifest.get('peak_memory_mib', 0):.0f} MiB · device "
        f"{manifest.get('device', {}).get('used', manifest.get('device', {}).get('requested', '?'))} · git "
        f"`{sha[:10]}`{dirty} · dataset `{dataset.get('name')}` sha256 `{str(dataset.get('sha256'))[:12]}` · "
        f"[manifest]({stem}/manifest.json) · [tables]({stem}/tables/) · [metrics]({stem}/metrics.json)",
        "",
    ]
    overrides = manifest.get("overrides", {})
    rows = []
    for name, value in manifest.get("parameters", {}).items():
        origin = (
            "-p"
            if name in overrides.get("cli", {})
            else "profile"
            if name in overrides.get("profile", {})
            else "run_all"
            if name in SET_BY_RUNNER
            else "notebook"
        )
        shown = json.dumps(value) if name not in SET_BY_RUNNER else f"{stem}/"
        rows.append(
            f"<tr><td><code>{name}</code></td><td><code>{html.escape(shown)}</code></td><td>{origin}</td></tr>"
        )
    lines.append(
        "<details><summary>Parameters of this run "
        f"(profile <code>{html.escape(manifest['profile'])}</code>)</summary>"
        f"<table><tr><th>parameter</th><th>value</th><th>set by</th></tr>{''.join(rows)}</table></details>"
    )
    if manifest.get("error"):
        lines += [
            "",
            "<p style='color:#c62828'><b>Failed:</b> "
            f"<code>{html.escape(manifest['error'][:800])}</code></p>",
        ]
    return "\n".join(lines)


_CODE_SPAN = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
# $$…$$, or $…$ on one line or across single line breaks (not \$, not "$ " openers or " $" closers, not
# "$5"): one pattern, so that a formula's MathML is never scanned again.
_MATH = re.compile(
    r"\$\$(?P<block>.+?)\$\$|(?<![\\$])\$(?!\s)(?P<inline>(?:[^$\n]|\n(?!\s*\n))+?)(?<![\s\\])\$(?!\d)", re.S
)


def math_to_mathml(markdown: str) -> str:
    """``$…$`` and ``$$…$$`` of a markdown cell as MathML, so that reports show equations offline.

    Browsers render MathML natively; nbconvert's pages would otherwise need MathJax from the internet and
    show raw TeX without it. Code spans are left alone; a formula the converter cannot read stays TeX.
    """
    from latex2mathml.converter import convert

    def mathml(match: re.Match) -> str:
        display = "block" if match.group("block") is not None else "inline"
        try:
            return convert(match.group(display).strip(), display=display)
        except Exception:  # noqa: BLE001 - any unsupported construct: keep the TeX as written
            return match.group(0)

    parts = _CODE_SPAN.split(markdown)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = _MATH.sub(mathml, parts[i])
    return "".join(parts)


def render(executed: Path, html_path: Path, manifest: dict) -> None:
    """The executed notebook as HTML: no code cells, no prompts, progress output coalesced, a run card."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    clean_outputs(nb)
    card = nbformat.v4.new_markdown_cell(run_card(manifest))
    first_md = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "markdown" and "papermill-error-cell-tag" not in c.metadata.get("tags", [])
        ),
        -1,
    )
    nb.cells.insert(first_md + 1, card)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
    exporter = HTMLExporter(
        template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": manifest.get("title") or manifest["stem"]}}
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)


def notebook_title(path: Path) -> str:
    for cell in _read_notebook(path).get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in _source(cell).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return Path(path).stem


# --------------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------------


def input_hash(job: Job, profile: str, kernel: str, code: str, dataset: dict) -> tuple[str, dict]:
    inputs = {
        "notebook_sha256": file_sha256(job.path),
        "parameters": {k: v for k, v in job.parameters.items() if k not in SET_BY_RUNNER},
        "code_sha256": code,
        "dataset_sha256": dataset.get("sha256"),
        "kernel": kernel,
        "packages": {
            k: v for k, v in package_versions().items() if k in ("python", "torch", "numpy", "pandas")
        },
    }
    return stable_hash(inputs), inputs


def _clear(folder: Path) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _fallback_notebook(job: Job, executed: Path, error: str) -> None:
    """When papermill wrote nothing (kernel missing, …): the source notebook with the error on top."""
    import nbformat

    nb = nbformat.read(job.path, as_version=4)
    nb.cells.insert(
        0,
        nbformat.v4.new_markdown_cell(
            f"<span style='color:red'>**The notebook did not run:** `{html.escape(error)}`</span>",
            metadata={"tags": ["papermill-error-cell-tag"]},
        ),
    )
    nbformat.write(nb, executed)


def execute(
    job: Job,
    reports_dir: Path,
    profile: str,
    kernel: str,
    *,
    code: str,
    force: bool,
    progress: bool,
    timeout: int | None,
    log=print,
) -> dict:
    """Run one notebook (or skip it when unchanged) and return its manifest."""
    import nbformat
    import papermill

    folder = reports_dir / job.stem
    html_path = reports_dir / f"{job.stem}.html"
    dataset = dataset_info(job.parameters)
    digest, inputs = input_hash(job, profile, kernel, code, dataset)
    previous = read_json(folder / "manifest.json")
    if (
        not force
        and previous
        and previous.get("status") == "ok"
        and previous.get("input_hash") == digest
        and html_path.exists()
    ):
        log(
            f"[{job.stem}] unchanged since {previous.get('started')} (input hash {digest[:12]}): "
            "skipped; --force reruns"
        )
        return {**previous, "skipped_in_last_run": True}

    # The run writes into reports/.staging/ and replaces the published report only when it succeeds (or
    # when there is no successful report to keep): a failed or interrupted run never destroys the last one.
    staging = reports_dir / STAGING / job.stem
    staged_html = staging.with_name(f"{job.stem}.html")
    _clear(staging)
    staged_html.unlink(missing_ok=True)
    if "RESULTS_DIR" in job.parameters:
        job = dataclasses.replace(job, parameters={**job.parameters, "RESULTS_DIR": str(staging)})
    executed = staging / f"{job.stem}.ipynb"
    manifest: dict[str, Any] = {
        "stem": job.stem,
        "title": notebook_title(job.path),
        "notebook": os.path.relpath(job.path, ROOT) if job.path.is_relative_to(ROOT) else str(job.path),
        "profile": profile,
        "parameters": job.parameters,
        "overrides": job.overrides,
        "kernel": kernel,
        "git": git_info(),
        "packages": package_versions(),
        "dataset": dataset,
        "device": {"requested": job.parameters.get("DEVICE"), **device_info()},
        "input_hash": digest,
        "inputs": inputs,
        "command": " ".join(sys.argv),
        "started": now(),
    }
    log(f"[{job.stem}] running ({profile}) …")
    start = time.perf_counter()
    error = None
    env_before = os.environ.get("TQDM_MININTERVAL")
    os.environ.setdefault("TQDM_MININTERVAL", "2")  # kernels inherit it: fewer stored progress refreshes
    try:
        with PeakMemory() as memory:
            papermill.execute_notebook(
                str(job.path),
                str(executed),
                parameters=job.parameters,
                kernel_name=kernel,
                language="python",
                cwd=str(job.path.parent),
                progress_bar=progress,
                log_output=False,
                execution_timeout=timeout,
                extra_arguments=[
                    f"--IPKernelApp.exec_lines={KERNEL_STARTUP}",
                    "--IPKernelApp.log_level=CRITICAL",
                ],
            )
    except Exception as exc:  # a failed notebook is recorded and rendered; the run goes on
        error = f"{type(exc).__name__}: {exc}".strip()
        if type(exc).__name__ != "PapermillExecutionError":
            error += "\n" + traceback.format_exc(limit=3)
    finally:
        if env_before is None:
            os.environ.pop("TQDM_MININTERVAL", None)
    duration = time.perf_counter() - start
    metrics = read_json(staging / "metrics.json")
    config = read_json(staging / "config.json") or {}
    if error is None and metrics is None and "RESULTS_DIR" in job.parameters:
        error = "the notebook ran but wrote no metrics.json (its last cell must save the run)"
    manifest.update(
        {
            "status": "ok" if error is None else "failed",
            "error": error,
            "ended": now(),
            "duration_s": round(duration, 2),
            "peak_memory_mib": round(memory.peak, 1),
            "headline": (metrics or {}).get("headline", {}),
        }
    )
    used = (config.get("environment") or {}).get("device")
    if used:
        manifest["device"]["used"] = used
    if not executed.exists():
        _fallback_notebook(job, executed, error or "no output notebook")
    nb = nbformat.read(executed, as_version=4)
    clean_outputs(nb)  # keep the stored notebook small: progress refreshes collapsed
    nbformat.write(nb, executed)
    manifest["outputs"] = {
        "html": html_path.name,
        "executed_notebook": f"{job.stem}/{executed.name}",
        "metrics": f"{job.stem}/metrics.json" if metrics is not None else None,
        "tables": sorted(f"{job.stem}/tables/{p.name}" for p in (staging / "tables").glob("*.csv")),
        "figures": sorted(f"{job.stem}/figures/{p.name}" for p in (staging / "figures").glob("*.png")),
    }
    try:
        render(executed, staged_html, manifest)
    except Exception as exc:  # rendering must not hide the run's result
        manifest["status"] = "failed"
        manifest["error"] = (manifest["error"] or "") + f"\nrendering failed: {type(exc).__name__}: {exc}"
    write_json(staging / "manifest.json", manifest)
    status = manifest["status"]
    kept = status != "ok" and previous is not None and previous.get("status") == "ok" and html_path.exists()
    if kept:
        where = f"{staged_html} (the last successful report, {html_path.name}, is kept)"
    else:
        publish(staging, staged_html, folder, html_path)
        where = str(html_path)
    log(
        f"[{job.stem}] {status} in {_fmt_seconds(duration)}, peak memory {memory.peak:.0f} MiB → {where}"
        + (f"\n    {error.splitlines()[0]}" if error else "")
    )
    return manifest


def publish(staging: Path, staged_html: Path, folder: Path, html_path: Path) -> None:
    """Replace the published report by the staged one: two renames, the old copy removed last."""
    import shutil

    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    os.replace(staged_html, html_path)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------

_STATUS_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "not run": "#757575"}


def _headline_html(headline: dict) -> str:
    items = []
    for name, value in headline.items():
        shown = f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
        items.append(f"<li><span class='k'>{html.escape(name)}</span> {shown}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "–"


def write_index(reports_dir: Path, stems: Sequence[str], run: dict) -> Path:
    rows = []
    for stem in stems:
        manifest = read_json(reports_dir / stem / "manifest.json") or {}
        status = manifest.get("status", "not run")
        colour = _STATUS_COLOURS.get(status, "#757575")
        title = html.escape(manifest.get("title") or stem)
        link = f"<a href='{stem}.html'>{title}</a>" if (reports_dir / f"{stem}.html").exists() else title
        extra = (
            (
                f"<br><a class='small' href='{stem}/manifest.json'>manifest</a> · "
                f"<a class='small' href='{stem}/tables/'>tables</a>"
            )
            if manifest
            else ""
        )
        error = (
            f"<div class='err'>{html.escape(manifest['error'].splitlines()[0][:300])}</div>"
            if manifest.get("error")
            else ""
        )
        attempt = read_json(reports_dir / STAGING / stem / "manifest.json") or {}
        if attempt.get("status") == "failed" and attempt.get("started", "") > manifest.get("started", ""):
            error += (
                f"<div class='err'>a later run ({html.escape(attempt['started'])}) failed: "
                f"<a href='{STAGING}/{stem}.html'>its report</a>; this one is kept</div>"
            )
        rows.append(
            f"<tr><td><code>{stem[:2]}</code></td><td>{link}{extra}</td>"
            f"<td><span class='badge' style='background:{colour}'>{html.escape(status)}</span>{error}</td>"
            f"<td>{html.escape(manifest.get('profile', '–'))}</td>"
            f"<td>{html.escape(manifest.get('started', '–'))}</td>"
            f"<td>{_fmt_seconds(manifest.get('duration_s'))}</td>"
            f"<td>{_headline_html(manifest.get('headline', {}))}</td></tr>"
        )
    git = run.get("git", {})
    profile = html.escape(run.get("profile", "?"))
    started = html.escape(run.get("started", "?"))
    sha = html.escape(str(git.get("sha", "unknown"))[:10])
    sha += " (uncommitted changes)" if git.get("dirty") else ""
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kdrepro reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1rem; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .5rem; text-align: left; vertical-align: top; }}
th {{ background: #f5f5f5; }}
.badge {{ color: white; border-radius: 4px; padding: 2px 8px; font-size: .9em; white-space: nowrap; }}
.err {{ color: #c62828; font-size: .8em; max-width: 22rem; }}
.small {{ font-size: .8em; }}
ul {{ margin: 0; padding-left: 1rem; font-size: .9em; }}
.k {{ color: #555; }}
</style></head><body>
<h1>kdrepro — replication reports</h1>
<p>Knowledge distillation for recommender systems (Kang, arXiv 2407.13952), one report per chapter.
Last run: <code>run_all.py --profile {profile}</code>, {started}, git <code>{sha}</code>;
see <a href="manifest.json">manifest.json</a>. Every table is also a CSV under
<code>&lt;chapter&gt;/tables/</code>.</p>
<table><tr><th>#</th><th>chapter</th><th>status</th><th>profile</th><th>run at (UTC)</th><th>time</th>
<th>headline (test, mean over seeds)</th></tr>
{"".join(rows)}
</table></body></html>
"""
    path = reports_dir / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ParameterError(
            f"no Jupyter kernel named {kernel!r}; install it with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel}` (make setup does)"
        ) from None


PATH_VARIABLES = ("KDREPRO_DATA_DIR", "KDREPRO_CACHE_DIR")


def absolute_path_variables() -> None:
    """Make relative data and cache folders absolute: the kernels inherit the environment but run in
    ``notebooks/``, where a path such as ``../shared/data`` would point somewhere else."""
    for name in PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.environ[name])


def run(
    *,
    profile: str = "quick",
    params: Sequence[str] = (),
    only: Sequence[str] = (),
    notebooks: Sequence[str] | None = None,
    notebooks_dir: Path | str = NOTEBOOKS_DIR,
    reports_dir: Path | str = REPORTS_DIR,
    force: bool = False,
    kernel: str = KERNEL,
    progress: bool | None = None,
    timeout: int | None = None,
    dry_run: bool = False,
    log=print,
) -> list[dict]:
    """Validate everything, then run the notebooks; returns their manifests. Raises ParameterError early."""
    notebooks_dir, reports_dir = Path(notebooks_dir).resolve(), Path(reports_dir).resolve()
    stems = list(notebooks if notebooks is not None else NOTEBOOKS)
    jobs = plan(select(stems, only), notebooks_dir, reports_dir, profile, params)
    if dry_run:
        for job in jobs:
            log(f"[{job.stem}] {json.dumps(job.parameters, default=str)}")
        return []
    check_kernel(kernel)
    absolute_path_variables()
    reports_dir.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    started, t0 = now(), time.perf_counter()
    code = code_hash()
    manifests = [
        execute(
            job,
            reports_dir,
            profile,
            kernel,
            code=code,
            force=force,
            progress=progress,
            timeout=timeout,
            log=log,
        )
        for job in jobs
    ]
    import resource

    run_info = {
        "profile": profile,
        "started": started,
        "ended": now(),
        "duration_s": round(time.perf_counter() - t0, 2),
        "command": " ".join(sys.argv),
        "git": git_info(),
        "packages": package_versions(),
        "device": device_info(),
        "max_child_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "notebooks": [
            {
                "stem": m["stem"],
                "status": m["status"],
                "skipped": bool(m.get("skipped_in_last_run")),
                "duration_s": m.get("duration_s"),
                "input_hash": m.get("input_hash"),
            }
            for m in manifests
        ],
    }
    latest = {stem: read_json(reports_dir / stem / "manifest.json") for stem in stems}
    write_json(
        reports_dir / "manifest.json", {"run": run_info, "notebooks": {k: v for k, v in latest.items() if v}}
    )
    write_index(reports_dir, stems, run_info)
    return manifests


def list_notebooks(notebooks_dir: Path, stems: Sequence[str], profile: str) -> None:
    from kdrepro import profiles

    for stem in stems:
        path = notebooks_dir / f"{stem}.ipynb"
        print(f"{stem}  ({notebook_title(path) if path.exists() else 'missing'})")
        if not path.exists():
            continue
        declared = declared_parameters(path)
        chosen = profiles.overrides(stem, profile, declared)
        for p in declared.values():
            mark = f"  [{profile}: {chosen[p.name]!r}]" if p.name in chosen else ""
            print(f"    {p.name} = {p.value!r}{mark}  # {p.comment}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="quick", help="smoke | quick (default) | paper")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEMS",
        help="comma-separated notebook stems or prefixes (e.g. 00,03)",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="[STEM:]KEY=VALUE",
        help="override a parameter (Python literal; repeatable)",
    )
    parser.add_argument(
        "--reports-dir", default=str(REPORTS_DIR), help="where reports go (default: reports/)"
    )
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    parser.add_argument(
        "--force", action="store_true", help="run notebooks even when their inputs are unchanged"
    )
    parser.add_argument("-k", "--kernel", default=KERNEL, help=f"Jupyter kernel (default {KERNEL})")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell before failing")
    parser.add_argument("--list", action="store_true", help="list notebooks and parameters, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the parameters, run nothing"
    )
    args = parser.parse_args(argv)
    try:
        if args.list:
            list_notebooks(Path(args.notebooks_dir), NOTEBOOKS, args.profile)
            return 0
        manifests = run(
            profile=args.profile,
            params=args.param,
            only=args.only,
            notebooks_dir=args.notebooks_dir,
            reports_dir=args.reports_dir,
            force=args.force,
            kernel=args.kernel,
            timeout=args.timeout,
            dry_run=args.dry_run,
        )
    except ParameterError as exc:
        print(f"run_all.py: error: {exc}", file=sys.stderr)
        return 2
    failed = [m["stem"] for m in manifests if m.get("status") != "ok"]
    if manifests:
        print(
            f"{len(manifests) - len(failed)}/{len(manifests)} notebooks ok"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + f" → {Path(args.reports_dir) / 'index.html'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
