"""Run the notebooks with papermill: executed copies and HTML under ``build/``.

    featlab notebooks --out build                            # every notebook, default parameters
    featlab notebooks --only 01 -p N_IMAGES 64               # one notebook, a parameter changed

The runner points ``FEATLAB_METRICS`` at ``build/<notebook>.metrics.json``, where the notebook's
:func:`featlab.nbtools.record` calls store their numbers, so tests can read them back;
``FEATLAB_NOTEBOOK_RUN=1`` tells a notebook it runs unattended (no widgets to wait for).
Needs the ``lab`` extra (papermill, nbconvert): ``pip install "featlab[lab]"``.
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


def list_notebooks(folder: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run(notebook: str | os.PathLike, out_dir: str | os.PathLike = "build", parameters: dict[str, Any] | None = None,
        cell_timeout: int = 1800, html: bool = True) -> dict[str, Any]:
    """Execute one notebook; return {"notebook", "seconds", "metrics", "output"}."""
    try:
        import nbformat
        import papermill as pm
        from nbconvert import HTMLExporter
    except ImportError as e:
        raise SystemExit(f'featlab notebooks needs the lab extra ({e.name} is missing): pip install "featlab[lab]"') from None
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
