"""Project conventions: dependencies listed once each way, notebooks clean, CI runs the README's command."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _names(reqs):
    return {re.split(r"[<>=!~ \[]", r.strip(), 1)[0].lower() for r in reqs if r.strip() and not r.startswith("-")}


def test_environment_yml_matches_pyproject():
    try:
        import tomllib                     # Python >= 3.11
    except ModuleNotFoundError:            # 3.9 / 3.10 (pyproject allows them): the same parser, as tomli
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "environment.yml").read_text()
    pip_block = env.split("- pip:", 1)[1]
    env_deps = [l.strip()[2:].split("#")[0] for l in pip_block.splitlines() if l.strip().startswith("- ")]
    assert _names(deps) == _names(env_deps)
    must = {"torch", "torchvision", "jupyterlab", "ipywidgets", "matplotlib", "captum", "papermill", "tqdm", "torchattacks"}
    assert must <= _names(deps)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make notebooks" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "colab.research.google.com/github" in first, "Colab badge first"
    assert path.name in first, "the Colab badge must point at this notebook"
    setup = next(c for c in cells if c["cell_type"] == "code")
    src = "".join(setup["source"])
    assert "google.colab" in src and "pip install" in src, "first code cell installs featlab only in Colab"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", "".join(tagged[0]["source"]), re.M)
    assert names, "the parameters cell declares UPPER_CASE parameters"
    for c in cells:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "commit notebooks without outputs"
            assert len("".join(c["source"]).splitlines()) <= 40, "a cell longer than a screen belongs in featlab/"
