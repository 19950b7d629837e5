"""What the notebooks' cells use from featlab besides the library itself: the parameters cell's
checks (:func:`check_parameters`, raised as one :class:`ParameterError`), :func:`record` (a number
stored under a name, read back by the tests through ``FEATLAB_METRICS``), and
:func:`running_unattended` (under papermill/CI: no widgets to wait for).

The runner that executes the notebooks is :mod:`featlab.runner`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._utils import check_choice, check_number, running_unattended  # noqa: F401 (re-exported)


_RECORDED: dict[str, Any] = {}


def record(name: str, value: Any) -> Any:
    """Store ``value`` (JSON-serialisable) under ``name``: in this kernel (:func:`recorded`) and in
    the metrics file of this run when the runner set one."""
    _RECORDED[name] = value
    path = os.environ.get("FEATLAB_METRICS")
    if path:
        p = Path(path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data[name] = value
        p.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
    return value


def recorded() -> dict[str, Any]:
    """Every value :func:`record` stored in this kernel, by name (a notebook's verdict reads them)."""
    return dict(_RECORDED)


class ParameterError(ValueError):
    """A value in a notebook's parameters cell that the notebook cannot use."""


class Rule:
    """What one parameter may be (:func:`check_parameters`)."""

    def __init__(self, kind: str, low: float | None = None, high: float | None = None, none: bool = False,
                 choices: tuple = (), item: "Rule | None" = None):
        self.kind, self.low, self.high, self.none, self.choices, self.item = kind, low, high, none, choices, item

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            text = f"a non-empty list of {self.item.describe() if self.item else 'values'}"
        elif self.kind in ("int", "number"):
            rng = [f">= {self.low:g}"] if self.low is not None else []
            rng += [f"<= {self.high:g}"] if self.high is not None else []
            text = ("an integer" if self.kind == "int" else "a number") + (" " + " and ".join(rng) if rng else "")
        else:
            text = {"bool": "True or False", "str": "a string"}[self.kind]
        return text + (" (or None)" if self.none else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str)
        if self.kind == "list":
            return isinstance(v, (list, tuple)) and len(v) > 0 and all(self.item is None or self.item.ok(i) for i in v)
        try:                        # featlab's one validator (featlab._utils), as the library and the CLI use it
            if self.kind == "choice":
                check_choice("value", v, self.choices)
            else:
                check_number("value", v, low=self.low, high=self.high, integer=self.kind == "int")
        except ValueError:
            return False
        return True


def Int(low: int | None = None, high: int | None = None, none: bool = False) -> Rule:
    return Rule("int", low, high, none)


def Number(low: float | None = None, high: float | None = None, none: bool = False) -> Rule:
    return Rule("number", low, high, none)


def OneOf(*choices: Any, none: bool = False) -> Rule:
    return Rule("choice", choices=choices, none=none)


def ListOf(item: Rule) -> Rule:
    return Rule("list", item=item)


BOOL, STR = Rule("bool"), Rule("str")


def check_parameters(values: dict[str, Any], **rules: Rule) -> None:
    """Check a notebook's parameters-cell values (``globals()``) against ``rules``; raise one
    :class:`ParameterError` that names every wrong parameter, its value and what it may be.

        check_parameters(globals(), EPOCHS=Int(1), EPS=Number(0, 1), DEVICE=OneOf("auto", "cpu", "cuda"))

    A parameter missing from ``values`` is an error too (papermill injected a misspelt name)."""
    wrong = []
    for name, rule in rules.items():
        if name not in values:
            wrong.append(f"{name} is not set (the parameters cell defines it)")
        elif not rule.ok(values[name]):
            wrong.append(f"{name} = {values[name]!r}: must be {rule.describe()}")
    if wrong:
        raise ParameterError("notebook parameters: " + "; ".join(wrong))


#: the cell tag of a "taught" cell: the step a notebook teaches, written in plain PyTorch
TAUGHT_TAG = "taught"


def taught(notebook: str | os.PathLike) -> dict[str, Any]:
    """The names the ``taught`` cells of ``notebook`` define, each cell run alone, in order, in one
    fresh namespace (d2l's ``#@save`` the other way round: the cell is the reader's code, and a test
    gives its functions and the library's the same batch and asserts the same numbers, so the two
    cannot drift). A taught cell must therefore be self-contained: its own imports, only definitions.

        >>> ns = taught("notebooks/03_afd.ipynb"); ns["afd_step"](...)
    """
    path = Path(notebook)
    cells = json.loads(path.read_text())["cells"]
    namespace: dict[str, Any] = {"__name__": f"taught:{path.name}"}
    found = 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and TAUGHT_TAG in cell.get("metadata", {}).get("tags", []):
            exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
            found += 1
    if not found:
        raise ValueError(f"notebook: {path} has no code cell tagged {TAUGHT_TAG!r}")
    return namespace
