"""Run the notebooks with papermill: executed copies and HTML under ``build/``.

    featlab notebooks --out build                            # every notebook, default parameters
    featlab notebooks --only 01 -p N_IMAGES 64               # one notebook, a parameter changed

Inside a notebook, :func:`record` stores a number under a name; the runner points
``FEATLAB_METRICS`` at ``build/<notebook>.metrics.json`` so tests can read the numbers back.
``FEATLAB_NOTEBOOK_RUN=1`` tells a notebook it runs unattended (no widgets to wait for).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import time
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


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
        if self.kind == "choice":
            return v in self.choices
        if self.kind == "list":
            return isinstance(v, (list, tuple)) and len(v) > 0 and all(self.item is None or self.item.ok(i) for i in v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.kind == "int" and not isinstance(v, int)):
            return False
        if v != v:                  # NaN
            return False
        return (self.low is None or v >= self.low) and (self.high is None or v <= self.high)


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


def running_unattended() -> bool:
    """True under papermill/CI (the runner sets FEATLAB_NOTEBOOK_RUN=1)."""
    return os.environ.get("FEATLAB_NOTEBOOK_RUN") == "1"


def list_notebooks(folder: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run(notebook: str | os.PathLike, out_dir: str | os.PathLike = "build", parameters: dict[str, Any] | None = None,
        cell_timeout: int = 1800, html: bool = True) -> dict[str, Any]:
    """Execute one notebook; return {"notebook", "seconds", "metrics", "output"}."""
    import papermill as pm
    nb = Path(notebook)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / nb.name
    metrics = out_dir / f"{nb.stem}.metrics.json"
    if metrics.exists():
        metrics.unlink()
    # the kernel inherits these; MPLBACKEND is dropped so the kernel uses the inline backend and
    # the executed notebook (and its HTML) keeps every figure
    env_before = {k: os.environ.get(k) for k in ("FEATLAB_METRICS", "FEATLAB_NOTEBOOK_RUN", "MPLBACKEND")}
    os.environ.update(FEATLAB_METRICS=str(metrics.resolve()), FEATLAB_NOTEBOOK_RUN="1")
    os.environ.pop("MPLBACKEND", None)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(out), parameters=parameters or {}, cwd=str(nb.parent),
                            execution_timeout=cell_timeout, progress_bar=False, kernel_name="python3")
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    if html:
        import nbformat
        from nbconvert import HTMLExporter
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(out), as_version=4))
        out.with_suffix(".html").write_text(body)
    result = {"notebook": nb.name, "seconds": round(seconds, 1), "output": str(out),
              "metrics": json.loads(metrics.read_text()) if metrics.exists() else {}}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="featlab notebooks", description="execute featlab's notebooks with papermill")
    p.add_argument("--out", default="build")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter (value parsed as a Python literal)")
    a = p.parse_args(argv)
    params = {}
    for k, v in a.param:
        try:
            params[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k] = v
    books = [nb for nb in list_notebooks() if not a.only or any(nb.name.startswith(o) for o in a.only)]
    if not books:
        raise SystemExit(f"no notebooks matched {a.only} in {NOTEBOOK_DIR}")
    total = time.perf_counter()
    summary = []
    for nb in books:
        r = run(nb, a.out, params)
        print(f"{r['notebook']}: {r['seconds']:.1f} s -> {r['output']} (+ .html)", flush=True)
        summary.append(r)
    (Path(a.out) / "notebooks_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"all notebooks: {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
