"""An executed chapter notebook as one HTML page: nbconvert's exporter, our preprocessors and template.

Preprocessors (nbconvert's own where one exists):

- :class:`WidgetsToText` — a tqdm widget bar becomes its final state as a line of text;
- ``CoalesceStreamsPreprocessor`` (nbconvert) — consecutive stream outputs merged, ``\\r`` refreshes cut;
- :class:`ProgressText` — ANSI codes and leftover refreshes removed, progress bars no longer red stderr;
- :class:`MathToMathML` — ``$…$`` in markdown as MathML (browsers render it; no MathJax, no network);
- :class:`ChapterPage` — the parameters cells give way to the run card ("results at a glance"),
  saved paper-vs-ours views are rebuilt from their CSV with today's view, images get alt text and a
  caption naming their section (which names the paper's table or figure).

The template (``templates/kdrepro``) hides code in a collapsible ``<details>`` per cell, adds navigation
(index, previous, next, contents) and one lean stylesheet; it loads no script.
"""

from __future__ import annotations

import ast
import functools
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import CoalesceStreamsPreprocessor, Preprocessor

from kdrepro import report
from kdrepro.book import glance
from kdrepro.book.params import cell_source, parameters_cell, parse_parameters

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "kdrepro"
CARD_TAG = "kdrepro-card"
HIDDEN_TAGS = {"parameters", "injected-parameters"}

# --------------------------------------------------------------------------------------------------
# Outputs: widgets, streams, progress bars
# --------------------------------------------------------------------------------------------------

_WIDGET = "application/vnd.jupyter.widget-view+json"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CR = re.compile(r"[^\n]*\r(?=[^\n])")
_BAR = re.compile(r"\d+/\d+ \[[\d:<?]+")  # tqdm's "n/total [elapsed<remaining" part


def collapse_progress(text: str) -> str:
    """Keep what a terminal would finally show: the last state of every ``\\r``-refreshed line."""
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    text = _CR.sub("", text)
    lines = [line.rstrip("\r").rstrip() for line in text.split("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line or i == len(lines) - 1)


def _widget_text(data: Mapping, state: Mapping) -> str | None:
    """A tqdm widget bar's final text, from the stored widget state; None when there is none or when the bar
    was hidden on closing (``leave=False``: a terminal would have cleared it too)."""

    def model(ref: Any) -> Mapping:
        return state.get(str(ref).replace("IPY_MODEL_", ""), {}).get("state", {})

    box = model(data.get(_WIDGET, {}).get("model_id"))
    if model(box.get("layout")).get("visibility") == "hidden":
        return None
    children = [model(c) for c in box.get("children", [])]
    if not any("max" in c and "value" in c for c in children):
        return None
    texts = [c.get("value", "") for c in children if c.get("_model_name") == "HTMLModel"]
    text = html.unescape(re.sub(r"<[^>]+>", "", " ".join(texts))).replace("\xa0", " ")
    return re.sub(r" {2,}", " ", text).strip() or None


class WidgetsToText(Preprocessor):
    """Widget outputs (tqdm bars) → their final state as a stderr line; no widget script on the page."""

    def preprocess(self, nb, resources):
        self._state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        self._state = self._state.get("state", {})
        nb, resources = super().preprocess(nb, resources)
        nb.metadata.pop("widgets", None)
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            outputs = []
            for out in cell.get("outputs", []):
                if _WIDGET in out.get("data", {}):
                    text = _widget_text(out["data"], self._state)
                    if text:
                        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=text + "\n"))
                    continue
                outputs.append(out)
            cell.outputs = outputs
        return cell, resources


class ProgressText(Preprocessor):
    """Final state of every progress line; a stderr stream made only of tqdm bars becomes stdout."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text = collapse_progress(out.text)
                lines = [line for line in out.text.splitlines() if line.strip()]
                if out.name == "stderr" and lines and all(_BAR.search(line) for line in lines):
                    out.name = "stdout"  # a progress bar, not an error: no red background
        cell.outputs = [o for o in cell.get("outputs", []) if o.output_type != "stream" or o.text.strip()]
        return cell, resources


OUTPUT_CLEANUP = (WidgetsToText, CoalesceStreamsPreprocessor, ProgressText)


def clean_outputs(nb) -> None:
    """Apply the output clean-up in place (used on the stored executed notebook, before rendering)."""
    for preprocessor in OUTPUT_CLEANUP:
        preprocessor().preprocess(nb, {})


# --------------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
# $$…$$, or $…$ on one line or across single line breaks (not \$, not "$ " openers or " $" closers, not
# "$5"): one pattern, so that a formula's MathML is never scanned again.
_MATH = re.compile(
    r"\$\$(?P<block>.+?)\$\$|(?<![\\$])\$(?!\s)(?P<inline>(?:[^$\n]|\n(?!\s*\n))+?)(?<![\s\\])\$(?!\d)", re.S
)
# TeX the converter does not know, as TeX it does (it would print "\arg" as a variable name).
_TEX_SPELLINGS = (
    (re.compile(r"\\arg\s*\\(max|min)"), r"\\operatorname*{arg\\,\1}"),
    (re.compile(r"\\arg(?![a-zA-Z])"), r"\\mathrm{arg}\\,"),
    (re.compile(r"\\operatorname\*?\{([^}]*)\}"), r"\\mathrm{\1}\\,"),
    (re.compile(r"\\(big|Big|bigg|Bigg)[lr]?(?=[()\[\]|.]|\\[a-zA-Z{}|])"), ""),
)


def tex_for_mathml(tex: str) -> str:
    for pattern, replacement in _TEX_SPELLINGS:
        tex = pattern.sub(replacement, tex)
    return tex


def math_to_mathml(markdown: str) -> str:
    """``$…$`` and ``$$…$$`` of a markdown text as MathML; code spans left alone; an unreadable formula
    stays TeX as written."""

    def mathml(match: re.Match) -> str:
        display = "block" if match.group("block") is not None else "inline"
        try:
            return latex_to_mathml(tex_for_mathml(match.group(display).strip()), display=display)
        except Exception:  # noqa: BLE001 - any unsupported construct: keep the TeX as written
            return match.group(0)

    parts = _CODE_SPAN.split(markdown)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = _MATH.sub(mathml, parts[i])
    return "".join(parts)


# A line starting "+ " right after a paragraph line continues the sentence ("… (DE-RRD\n+ IR) is …");
# markdown would start a bullet list there. Notebooks write their lists with "- ".
_PLUS_CONTINUATION = re.compile(r"(?<=[^\n])\n\+ ")


class MathToMathML(Preprocessor):
    """Markdown cells: formulas as MathML, a "+" that continues a sentence kept in its paragraph."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(_PLUS_CONTINUATION.sub("\n\\+ ", cell.source))
        return cell, resources


# --------------------------------------------------------------------------------------------------
# The chapter page: run card, rebuilt views, captions, alt text
# --------------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{2,4})\s+(.+?)\s*$", re.M)
_SHOW = re.compile(r"recorder\.show\(\s*[\"'](?P<name>[\w.-]+)[\"']")
_FIGURE = re.compile(r"recorder\.figure\(\s*[\"'](?P<name>[\w.-]+)[\"']")
# Views rebuilt from the table's CSV at render time (the saved numbers, today's layout).
VIEWS = {"paper_vs_ours_view": report.paper_vs_ours_view, "ranked_view": report.ranked_view}


def _plain(markdown: str) -> str:
    """Heading text without markdown (code spans, emphasis) for captions and alt text."""
    return re.sub(r"[`*_]", "", markdown).strip()


def _rebuilt_view(source: str, folder: Path | None, caption: str, stored: str) -> str | None:
    """HTML of a table view rebuilt from ``tables/<name>.csv`` with today's view, or None (keep ``stored``).

    Rebuilt: a paper-vs-ours or ranked view; a table shown through ``report.show_table`` (with the call's
    precision); a DataFrame shown as it is (``recorder.show(name, frame)``) when its index was only row
    numbers (the CSV holds everything it showed).
    """
    match = _SHOW.search(source)
    if folder is None or match is None:
        return None
    path = folder / "tables" / f"{match['name']}.csv"
    if not path.is_file():
        return None
    name = next((name for name in VIEWS if f"report.{name}(" in source), None)
    shown = _shown_table(source) if name is None else None
    if name is None and (shown is None or (shown[1] is None and not _positional_index(stored))):
        return None
    try:
        table = pd.read_csv(path)  # an empty section's table has no columns: EmptyDataError, a ValueError
        if name is not None:
            view = VIEWS[name](table, caption=caption) if name == "paper_vs_ours_view" else VIEWS[name](table)
        else:
            view = report.show_table(table, precision=shown[1] if shown[1] is not None else 4)
        return view.to_html()
    except (KeyError, ValueError, TypeError):  # an older table layout: keep the stored output
        return None


def _shown_table(source: str) -> tuple[str, int | None] | None:
    """``(name, precision)`` of a cell ending in ``recorder.show("name", table, report.show_table(table,
    precision=p))`` (precision 4 when not given), ``(name, None)`` when it ends in ``recorder.show("name",
    frame)`` (a DataFrame shown as it is); else None."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    call = body[-1].value if body and isinstance(body[-1], ast.Expr) else None
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "show"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "recorder"
        and call.args
        and isinstance(call.args[0], ast.Constant)
    ):
        return None
    name = str(call.args[0].value)
    views = [*call.args[2:], *(k.value for k in call.keywords if k.arg == "view")]
    if not views:
        return (name, None) if len(call.args) == 2 else None
    view = views[0]
    if not (isinstance(view, ast.Call) and isinstance(view.func, ast.Attribute) and view.func.attr == "show_table"):
        return None
    given = [k.value for k in view.keywords if k.arg == "precision"] + view.args[1:2]
    try:
        precision = ast.literal_eval(given[0]) if given else 4
    except ValueError:
        return None
    return (name, precision) if isinstance(precision, int) else None


_ROW_HEAD = re.compile(r"<tr[^>]*>\s*<th[^>]*>([^<]*)</th>")


def _positional_index(markup: str) -> bool:
    """A pandas DataFrame's HTML whose index is only row numbers (unnamed, integers)."""
    head, _, body = markup.partition("<tbody>")
    numbers = _ROW_HEAD.findall(body)
    return head.count("<tr") == 1 and bool(numbers) and all(n.strip().isdigit() for n in numbers)


_FIT_SETTING = re.compile(r"^\[\d+/\d+\].*?\b(\w+)=(\S+)", re.M)
_SWEEP_CALL = re.compile(r"sweep_plot\([^\n]*?,\s*[\"'](?P<x>\w+)[\"']")


def _record_settings(cell, swept: dict[str, set[str]]) -> None:
    """Collect the swept ``name=value`` of the library's fit lines ("[2/4] bpr-20 RRD lambda_rrd=0.01 …")."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.text.splitlines():
                for name, value in re.findall(r"\b(\w+)=(\S+)", line) if _FIT_SETTING.match(line) else ():
                    swept.setdefault(name, set()).add(value)


def _one_point_sweep(cell, swept: dict[str, set[str]]) -> None:
    """A stored sweep figure over fewer than 2 values (an older run) is replaced by "not run in this profile"."""
    call = _SWEEP_CALL.search(cell.source)
    if call is None or call["x"] not in swept or len(swept[call["x"]]) >= 2:
        return
    values = ", ".join(sorted(swept[call["x"]]))
    note = report.NotRun(f"a sweep over {call['x']} needs at least 2 values; this run has 1 ({values})")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": note.to_html()})
        if "image/png" in out.get("data", {})
        else out
        for out in cell.outputs
    ]


PACKAGE = Path(report.__file__).resolve().parent


def alt_text(name: str | None, folder: Path | None, plot: str | None, section: str) -> str:
    """A figure's alt text: what it draws, as :func:`kdrepro.report.write_figure` stored it in the PNG (its
    panels, axes and series); for a figure saved before that, what its plotting function's docstring says it
    draws (``plot``); else its name and section."""
    stored = report.figure_description(folder / "figures" / f"{name}.png") if folder and name else None
    label = (name or "figure").replace("_", " ")
    if stored:
        return f"Figure “{label}”: {stored}"
    if plot:
        return f"Figure “{label}”: {plot}"
    return f"Figure “{label}” of section “{section}”; its numbers are in the section's tables"


def _module_imports(tree: ast.AST) -> dict[str, str]:
    """``{name: "kdrepro.module"}`` of a cell's ``from kdrepro[.pkg] import name`` lines."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kdrepro":
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


@functools.lru_cache(maxsize=64)
def _docstrings(module: str) -> dict[str, tuple[list[str], str]]:
    """``{function: (parameter names, docstring)}`` of a kdrepro module, read from its source (not imported)."""
    relative = Path(*module.split(".")[1:])
    path = next((p for p in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py")
                 if p.is_file()), None)
    if path is None:
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        f.name: ([a.arg for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)], ast.get_docstring(f) or "")
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
    }


def _literal(node: ast.AST) -> str | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # not a literal
        return None
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _describe_call(call: ast.Call, modules: Mapping[str, str], literals: Mapping[str, str]) -> str | None:
    """The first paragraph of a plotting function's docstring, with the call's arguments given as literals or
    as names of literal parameters (``literals``) in place of their parameters (``sweep_plot(r, "phi",
    ["HR@5"])``: "Mean test HR@5 … against the swept column phi")."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in modules):
        return None
    params, doc = _docstrings(modules[func.value.id]).get(func.attr, ([], ""))
    sentence = " ".join(doc.split("\n\n")[0].split())
    if not sentence:
        return None
    given = dict(zip(params, call.args, strict=False)) | {k.arg: k.value for k in call.keywords if k.arg}
    for param, node in given.items():
        value = literals.get(node.id) if isinstance(node, ast.Name) else _literal(node)
        if value is not None:
            sentence = sentence.replace(f"``{param}``", value)
    sentence = re.sub(r":\w+:`~?([^`]+)`", r"\1", sentence).replace("``", "")
    return sentence if len(sentence) <= 300 else sentence[:300].rsplit(" ", 1)[0] + " …"


def plot_descriptions(cells: list) -> dict[int, str]:
    """``{id(cell): description}`` of every cell saving a figure (``recorder.figure(name, plot)``): its
    plotting call's docstring (:func:`_describe_call`); a figure passed by name is found at its assignment in
    an earlier or the same cell; a parameter passed by name is read from the (injected) parameters cells."""
    modules: dict[str, str] = {}
    calls: dict[str, ast.Call] = {}  # variable → the call it was last assigned
    literals: dict[str, str] = {}  # parameter → its value as text (CLAIM_METRICS → "HR@5, NDCG@5")
    out = {}
    for cell in cells:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        modules.update(_module_imports(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
                if isinstance(node.value, ast.Call):
                    calls.update(dict.fromkeys(names, node.value))
                elif _literal(node.value) is not None:
                    literals.update(dict.fromkeys(names, _literal(node.value)))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "figure"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "recorder"
                and len(node.args) >= 2
            ):
                plot = node.args[1]
                plot = calls.get(plot.id) if isinstance(plot, ast.Name) else plot
                text = _describe_call(plot, modules, literals) if isinstance(plot, ast.Call) else None
                if text:
                    out[id(cell)] = text
    return out


class ChapterPage(Preprocessor):
    """Run card after the title, parameters cells hidden, views rebuilt, figures captioned."""

    def preprocess(self, nb, resources):
        page = resources.get("kdrepro", {})
        folder = page.get("folder")
        cells = []
        section = ""
        swept: dict[str, set[str]] = {}  # "name=value" settings of the fits printed in this section
        plots = plot_descriptions([c for c in nb.cells if c.cell_type == "code"])  # id(cell) → text
        for cell in nb.cells:
            tags = set(cell.metadata.get("tags", []))
            if cell.cell_type == "code" and tags & HIDDEN_TAGS:
                continue
            if cell.cell_type == "markdown":
                headings = _HEADING.findall(cell.source)
                if headings:
                    section = _plain(headings[-1][1])
                    swept = {}
            if cell.cell_type == "code":
                _record_settings(cell, swept)
                self._outputs(cell, section, folder, plots)
                _one_point_sweep(cell, swept)
            cells.append(cell)
        first = next(
            (
                i
                for i, c in enumerate(cells)
                if c.cell_type == "markdown" and "papermill-error-cell-tag" not in c.metadata.get("tags", [])
            ),
            -1,
        )
        card = nbformat.v4.new_raw_cell(page.get("card_html", ""), metadata={"tags": [CARD_TAG]})
        cells.insert(first + 1, card)
        nb.cells = cells
        return nb, resources

    @staticmethod
    def _outputs(cell, section: str, folder: Path | None, plots: Mapping[int, str]) -> None:
        stored = next((o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})), "")
        rebuilt = _rebuilt_view(cell.source, folder, section, stored) if stored else None
        figure = _FIGURE.search(cell.source)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if rebuilt is not None and "text/html" in data:
                data["text/html"] = rebuilt
                rebuilt = None
            if set(data) == {"text/plain"}:
                table = _dict_table(data["text/plain"])
                if table:
                    data["text/html"] = table
            if "text/html" in data:
                data["text/html"] = _breakable_headers(_align_text_cells(data["text/html"]))
            if "image/png" in data:
                name = figure["name"].replace("_", " ") if figure else "figure"
                meta = out.setdefault("metadata", {}).setdefault("image/png", {})
                meta["alt"] = alt_text(figure["name"] if figure else None, folder, plots.get(id(cell)), section)
                meta["caption"] = f"Figure: {name} — {section}" + (
                    f" (figures/{figure['name']}.png)" if figure else ""
                )
        cell.metadata["kdrepro_section"] = section


def _dict_table(text: str) -> str | None:
    """A displayed dict of plain values (``{'device': 'cpu', …}``) as a two-column table, else None."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(v, str | int | float | bool) for v in value.values())
    ):
        return None
    rows = "".join(
        f"<tr><th class='t'>{html.escape(str(k))}</th><td class='t'>{html.escape(str(v))}</td></tr>"
        for k, v in value.items()
    )
    return f"<table class='kv'>{rows}</table>"


_TD = re.compile(r"<td([^>]*)>(.*?)</td>", re.S)
_NUMBER = re.compile(r"^\s*([-+−]?[\d.,]+\s*(%|±|s|MiB|\(|$)|[–-]?\s*$|(True|False)\s*$)")


def _align_text_cells(markup: str) -> str:
    """Cells holding words (not numbers) left-aligned: class ``t`` (numbers stay right-aligned)."""

    def cell(match: re.Match) -> str:
        attrs, content = match.groups()
        text = html.unescape(re.sub(r"<[^>]+>", "", content))
        if _NUMBER.match(text):
            return match.group(0)
        if 'class="' in attrs:
            classes = attrs.replace('class="', 'class="t ', 1)
            return f"<td{classes}>{content}</td>"
        return f'<td class="t"{attrs}>{content}</td>'

    return _TD.sub(cell, markup)


_TH = re.compile(r"<th([^>]*)>([^<]*)</th>")


def _breakable_headers(markup: str) -> str:
    """Column names such as ``paper_parameters_millions`` may wrap after their underscores."""
    return _TH.sub(lambda m: f"<th{m[1]}>{m[2].replace('_', '_<wbr>')}</th>", markup)


def _toc(body: str) -> str:
    """A contents list from the page's own h2 headings (their ids come from nbconvert)."""
    items = re.findall(r'<h2 id="([^"]+)">(.*?)(?:<a class="anchor-link"[^>]*>.*?</a>)?</h2>', body, re.S)
    links = "".join(
        f'<li><a href="#{anchor}">{re.sub(r"<[^>]+>", "", text).strip()}</a></li>' for anchor, text in items
    )
    return f'<nav class="toc" aria-label="contents"><b>Contents</b><ul>{links}</ul></nav>' if links else ""


def exporter() -> HTMLExporter:
    html_exporter = HTMLExporter(
        template_name=TEMPLATE,
        extra_template_basedirs=[str(TEMPLATES)],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    for preprocessor in (*OUTPUT_CLEANUP, MathToMathML, ChapterPage):
        html_exporter.register_preprocessor(preprocessor(), enabled=True)
    return html_exporter


def render(nb, manifest: Mapping[str, Any], *, folder: Path | None, nav: Mapping[str, Any]) -> str:
    """The page of one chapter: ``nb`` (executed) with ``manifest``'s run card and ``nav`` links.

    ``folder``: the chapter's results (tables/*.csv, metrics.json) the card and rebuilt views read.
    """
    metrics = glance.read_json(folder / "metrics.json") if folder else None
    cell = parameters_cell(nb)
    defaults = {n: p.value for n, p in parse_parameters(cell_source(cell)).items()} if cell else {}
    card = glance.card_html(manifest, metrics or {}, folder, defaults)
    resources = {
        "metadata": {"name": manifest.get("title") or manifest["stem"]},
        "kdrepro": {
            "card_html": card,
            "folder": folder,
            "nav": dict(nav),
            "css": (TEMPLATES / TEMPLATE / "static" / "kdrepro.css").read_text(encoding="utf-8"),
        },
    }
    body, _ = exporter().from_notebook_node(nb, resources=resources)
    return body.replace("<!--kdrepro:toc-->", _toc(body), 1)


def read_notebook(path: Path):
    return nbformat.read(path, as_version=4)


def notebook_title(path: Path) -> str:
    for cell in read_notebook(path).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return Path(path).stem
