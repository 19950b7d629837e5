"""featlab's version, the commit a record was made at, and whether a notebook runs unattended."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: featlab's version (also ``featlab.__version__``; pyproject.toml carries the same string)
VERSION = "0.1.0"


def git_commit(short: bool = False, cwd: str | Path | None = None) -> str:
    """The commit of the featlab checkout (or of ``cwd``), "+dirty" if tracked files changed; "unknown" if none."""
    cwd = cwd or Path(__file__).resolve().parents[2]     # the checkout: featlab/_utils/env.py
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, cwd=cwd)
        commit = out.stdout.strip() if out.returncode == 0 else ""   # no repository, or no commit yet
        commit = commit or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd).stdout.strip()
        return commit + ("+dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def running_unattended() -> bool:
    """True under papermill/CI (``featlab.runner`` sets FEATLAB_NOTEBOOK_RUN=1)."""
    return os.environ.get("FEATLAB_NOTEBOOK_RUN") == "1"


def show_progress(progress: bool | None) -> bool:
    """Whether a loop shows its progress bar: ``progress`` if given, else everywhere but an unattended
    notebook run, where the saved notebook would keep a bar's frames as its output."""
    return (not running_unattended()) if progress is None else bool(progress)
