"""A chapter's parameters: read them (papermill), check every override's type, then every value.

The parameters cell holds ``NAME = literal  # meaning`` lines. :func:`declared_parameters` reads it with
``papermill.inspect_notebook`` (the names, defaults and help papermill will inject against) and checks
it line by line with :mod:`ast`, so that a line papermill cannot read (a comment with ``=``, a multi-line
literal, an annotation) is an error instead of an override silently ignored.

Overrides (profile, ``-p``) must have the declared value's type (:func:`check_type`); the final values
must then make sense (:func:`check_values`: counts ≥ 1, non-empty seeds, known models, protocols and
datasets, dimension dicts covering the models, a device that exists …). Every error names the notebook,
the parameter and what is allowed, before anything runs.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
import torch

from kdrepro import data, splits
from kdrepro.models import MODELS as MODEL_NAMES

SET_BY_RUNNER = ("RESULTS_DIR",)


class ParameterError(ValueError):
    """A parameter is unknown, has the wrong type or an impossible value (raised before anything runs)."""


@dataclass(frozen=True)
class Parameter:
    name: str
    value: Any
    comment: str = ""


# --------------------------------------------------------------------------------------------------
# Reading the parameters cell
# --------------------------------------------------------------------------------------------------


def parameters_cell(nb: Mapping) -> Mapping | None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            return cell
    return None


def cell_source(cell: Mapping) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


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
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
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
            raise ParameterError(
                f"{where}, line {node.lineno}: the comment of {name} contains '=', which papermill cannot "
                "parse (overrides of it would be ignored); reword it, e.g. 'x: 2' or 'x is 2'"
            )
        found[name] = Parameter(name, value, comment)
    return found


def declared_parameters(path: Path) -> dict[str, Parameter]:
    """The notebook's parameters as papermill reads them, checked against the cell's own syntax tree."""
    path = Path(path)
    where = f"{path.name}: parameters cell"
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    if cell is None:
        raise ParameterError(f"{path}: no code cell tagged 'parameters'")
    strict = parse_parameters(cell_source(cell), where)
    if not nb.metadata.get("kernelspec", {}).get("name"):
        raise ParameterError(f"{path}: the notebook has no kernelspec (save it from Jupyter once)")
    inspected = papermill.inspect_notebook(str(path))
    for name, parameter in strict.items():
        seen = inspected.get(name)
        try:
            readable = seen is not None and ast.literal_eval(seen["default"]) == parameter.value
        except (ValueError, SyntaxError):
            readable = False
        if not readable:
            raise ParameterError(
                f"{where}: papermill cannot read the line of {name} (write it on one line as "
                f"'{name} = literal  # meaning'); overrides of it would be ignored"
            )
    return strict


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


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


def check_type(name: str, value: Any, declared: Mapping[str, Parameter], source: str) -> Any:
    """``value`` if it suits the declared parameter ``name`` (ints widen to float), else ParameterError."""
    if name in SET_BY_RUNNER:
        raise ParameterError(f"{source}: {name} is set by the runner (use --reports-dir)")
    if name not in declared:
        raise ParameterError(f"{source}: unknown parameter {name!r}; declared: {', '.join(declared)}")
    expected = declared[name].value
    if not _matches(value, expected):
        shape = type(expected).__name__
        if isinstance(expected, list | tuple | dict) and expected:
            element = _element_type(expected.values() if isinstance(expected, dict) else expected)
            shape += f" of {element.__name__}" if element else ""
        raise ParameterError(
            f"{source}: {name} must be of type {shape}, like the notebook's {expected!r}, got {value!r} "
            f"({type(value).__name__})"
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
# Values
# --------------------------------------------------------------------------------------------------

# Integer parameters that count something: at least 1. Every other integer is at least 0 (seeds, patience,
# THREADS where 0 means torch's default, …).
_COUNT = re.compile(
    r"^(EPOCHS|BATCH_SIZE|EVAL_EVERY|NUM_\w+|\w+_(K|L|N|TOP_N|TOP_K|USERS|PAIRS|ANCHORS|HIDDEN|GROUPS|EPOCHS|"
    r"ITEMS|EXPERTS|DIM|DIMS|LAYERS|WORKERS))$"
)
# Integer lists of counts (each ≥ 1); other integer lists hold values ≥ 0 (seeds, epochs shown).
_COUNT_LIST = re.compile(r"^(EXPERT_COUNTS|\w+_KS|IR_USERS|GRID_NUM_EXPERTS|\w+_DIMS?)$")
_MODEL_LISTS = re.compile(r"^(\w+_)?MODELS$")
_POSITIVE_FLOAT = re.compile(r"^(LR|TAU_END|\w+_T|\w+_TEMPERATURE|TEMPERATURE)$")
_SHARE = re.compile(r"^(\w*TOLERANCE|GAMMA|\w+_SHARE)$")  # in [0, 1]
_SIZE_RATIOS = re.compile(r"^(\w+_)?PHIS$")  # in (0, 1]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device_problem(device: str) -> str | None:
    if not _DEVICE.match(device):
        return 'allowed: "auto", "cpu", "cuda", "cuda:N" or "mps"'
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return 'CUDA is not available on this machine; use "auto" or "cpu"'
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 … )"
    if device == "mps" and not torch.backends.mps.is_available():
        return 'MPS is not available on this machine; use "auto" or "cpu"'
    return None


def _number_problems(name: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        if _COUNT.match(name) and value < 1:
            return [f"{name} = {value!r}: a count, allowed ≥ 1"]
        if value < 0:
            return [f"{name} = {value!r}: allowed ≥ 0"]
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return [f"{name} = {value!r}: must be finite"]
        if _POSITIVE_FLOAT.match(name) and value <= 0:
            return [f"{name} = {value!r}: allowed > 0"]
        if _SHARE.match(name) and not 0 <= value <= 1:
            return [f"{name} = {value!r}: a share, allowed 0 … 1"]
        if name.startswith("LAMBDA") and value < 0:
            return [f"{name} = {value!r}: a loss weight, allowed ≥ 0"]
    return []


def _list_problems(name: str, value: list, default: Any) -> list[str]:
    problems = []
    if not value and default:
        problems.append(f"{name} = []: must not be empty (the notebook's default is {default!r})")
    if _MODEL_LISTS.match(name):
        unknown = [m for m in value if m not in MODEL_NAMES]
        if unknown:
            problems.append(f"{name}: unknown model(s) {unknown}; allowed: {', '.join(MODEL_NAMES)}")
    if name == "PROTOCOLS":
        unknown = [p for p in value if p not in splits.PROTOCOLS]
        if unknown:
            problems.append(f"{name}: unknown protocol(s) {unknown}; allowed: {', '.join(splits.PROTOCOLS)}")
    if name.endswith("SEEDS") and len(set(map(repr, value))) != len(value):
        problems.append(f"{name} = {value!r}: a seed is repeated")
    if _SIZE_RATIOS.match(name):
        bad = [v for v in value if not isinstance(v, int | float) or not 0 < v <= 1]
        if bad:
            problems.append(f"{name}: {bad} outside the allowed (0, 1] (student dim over teacher dim)")
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        floor = 1 if _COUNT_LIST.match(name) else 0
        bad = [v for v in value if v < floor]
        if bad:
            problems.append(f"{name}: {bad} below the allowed minimum {floor}")
    else:
        problems += [p for v in value if isinstance(v, int | float) for p in _number_problems(name, v)]
    return problems


def _per_model_dicts(values: Mapping[str, Any]) -> list[str]:
    """Dicts keyed by model (TEACHER_DIMS, LAMBDA_DE …) must cover every model the notebook trains."""
    models = {m for name, v in values.items() if _MODEL_LISTS.match(name) and isinstance(v, list) for m in v}
    problems = []
    for name, value in values.items():
        if not isinstance(value, dict) or not value or not set(value) <= set(MODEL_NAMES):
            continue
        missing = sorted(models - set(value))
        if missing:
            problems.append(
                f"{name} = {value!r} has no entry for model(s) {missing} of "
                f"{', '.join(n for n in values if _MODEL_LISTS.match(n))}; give one per model"
            )
        problems += [p for k, v in value.items() for p in _number_problems(f"{name}[{k!r}]", v)]
        if name.endswith("DIMS"):
            problems += [f"{name}[{k!r}] = {v!r}: a dimension, allowed ≥ 1" for k, v in value.items() if v < 1]
    return problems


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "DEVICE": lambda v: _device_problem(v) if isinstance(v, str) else None,
    "DATASET": lambda v: None if v in data.DATASETS else f"allowed: {', '.join(data.DATASETS)}",
}


def check_values(where: str, values: Mapping[str, Any], declared: Mapping[str, Parameter]) -> None:
    """Raise one ParameterError listing every impossible value of a notebook's final parameters."""
    problems: list[str] = []
    for name, value in values.items():
        if name in SET_BY_RUNNER:
            continue
        check = CHECKS.get(name)
        problem = check(value) if check else None
        if problem:
            problems.append(f"{name} = {value!r}: {problem}")
        if isinstance(value, int | float):
            problems += _number_problems(name, value)
        elif isinstance(value, list):
            problems += _list_problems(name, value, declared[name].value if name in declared else None)
    problems += _per_model_dicts(values)
    if problems:
        raise ParameterError(f"{where}: " + "; ".join(problems))
