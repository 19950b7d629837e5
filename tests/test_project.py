"""Project conventions: dependencies listed once each way, one project URL, notebooks clean, CI runs the
README's command."""
import ast
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/"


def _pyproject():
    try:
        import tomllib                     # Python >= 3.11
    except ModuleNotFoundError:            # 3.9 / 3.10 (pyproject allows them): the same parser, as tomli
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs):
    return {re.split(r"[<>=!~ ;@\[]", r.strip(), 1)[0].lower().replace("_", "-")
            for r in reqs if r.strip() and not r.startswith("-")}


def _env_deps():
    pip_block = (ROOT / "environment.yml").read_text().split("- pip:", 1)[1]
    return [l.strip()[2:].split("#")[0].strip() for l in pip_block.splitlines() if l.strip().startswith("- ")]


def test_environment_yml_matches_pyproject():
    """The conda env is for local lab users: the runtime dependencies plus the lab extra, same specifiers."""
    project = _pyproject()
    deps, lab = project["dependencies"], project["optional-dependencies"]["lab"]
    env_deps = [d for d in _env_deps() if not d.startswith("-")]
    assert sorted(env_deps) == sorted(r.replace(" ", "") for r in deps + lab)
    assert "-e ." in _env_deps(), "environment.yml installs featlab itself"


def test_runtime_dependencies_are_light():
    """`pip install featlab` (the Colab cells) brings no Jupyter server and no notebook runner: those are the
    `lab` extra, and the Makefile (what CI runs) installs it with the test extra."""
    project = _pyproject()
    deps = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"torch", "torchvision", "numpy", "ipywidgets", "matplotlib", "captum", "tqdm", "torchattacks", "scipy"} <= deps
    heavy = {"jupyterlab", "notebook", "jupyter", "papermill", "nbconvert", "nbclient", "ipykernel", "jupyter-server"}
    assert not deps & heavy, f"runtime dependencies pull in the Jupyter stack: {sorted(deps & heavy)}"
    assert {"jupyterlab", "papermill", "nbformat", "nbconvert", "ipykernel"} <= _names(extras["lab"])
    assert {"pytest", "hypothesis", "playwright"} <= _names(extras["test"])
    setup = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert setup and {"lab", "test"} <= set(setup.group(1).split(",")), "make setup installs .[lab,test]"


_DIST = {"IPython": "ipython", "PIL": "pillow", "yaml": "pyyaml"}     # import name -> distribution, where they differ
_TRANSITIVE = {"scipy"}                                               # declared for a dependency that omits it


def _imports(source):
    """Top-level module names imported in ``source`` (IPython ``!``/``%`` lines skipped): (all, at module level),
    at module level meaning outside any function, i.e. run by importing the module."""
    lines = [re.sub(r"^(\s*)[!%].*", r"\1pass", l) for l in source.splitlines()]
    tree = ast.parse("\n".join(lines))
    every, module_level = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            names = set()
            if isinstance(child, ast.Import):
                names = {a.name.split(".")[0] for a in child.names}
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = {child.module.split(".")[0]}
            every.update(names)
            if not in_function:
                module_level.update(names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return every, module_level


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="needs Python >= 3.10")
def test_dependencies_are_what_featlab_and_the_notebooks_import():
    """Runtime = what featlab's modules and the notebooks' cells import. The lab extra (papermill, nbconvert:
    the notebook runner) may be imported only inside functions, so `import featlab` never needs it.
    Nothing declared that nobody imports."""
    project = _pyproject()
    deps, lab = _names(project["dependencies"]), _names(project["optional-dependencies"]["lab"])
    local = {"featlab"} | set(sys.stdlib_module_names) | {"__future__"}

    def dists(mods):
        return {_DIST.get(m, m).lower() for m in mods if m not in local}

    used = set()
    for path in sorted((ROOT / "featlab").rglob("*.py")):
        every, module_level = map(dists, _imports(path.read_text()))
        where = path.relative_to(ROOT)
        assert every <= deps | lab, f"{where} imports {sorted(every - deps - lab)}, declared nowhere"
        assert module_level <= deps, f"{where} imports the lab extra's {sorted(module_level - deps)} on import"
        used |= every
    for path in NOTEBOOKS:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        mods = set().union(*(dists(_imports("".join(c["source"]))[0]) for c in cells))
        assert mods <= deps, f"{path.name} imports {sorted(mods - deps)}, not in the runtime dependencies"
        used |= mods
    assert deps - used - _TRANSITIVE == set(), f"declared but never imported: {sorted(deps - used - _TRANSITIVE)}"


def _repo_url():
    urls = _pyproject()["urls"]
    url = urls["Repository"]
    assert urls.get("Homepage", url) == url
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert m, f"[project.urls] Repository is not a GitHub repository URL: {url}"
    return url, m.group(1), m.group(2)


def _colab_links(text):
    return re.findall(re.escape(COLAB) + r"[^\s)\]\"'>]*", text)


def _pip_requirements(source):
    """The requirements of every `pip install` line in ``source`` (options dropped)."""
    reqs = []
    for line in source.splitlines():
        m = re.search(r"pip install (.*)", line)
        if m:
            reqs += [a for a in shlex.split(m.group(1).split("#")[0]) if not a.startswith("-")]
    return reqs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_colab_links_use_the_project_url(path):
    """The badge opens this very notebook from [project.urls]' repository; the Colab cell installs the
    light set (no extras) from the same repository."""
    url, owner, repo = _repo_url()
    cells = json.loads(path.read_text())["cells"]
    badge = _colab_links("".join(cells[0]["source"]))
    assert badge == [f"{COLAB}{owner}/{repo}/blob/main/notebooks/{path.name}"], f"the Colab badge: {badge}"
    install = next(c for c in cells if c["cell_type"] == "code")
    assert _pip_requirements("".join(install["source"])) == [f"featlab @ git+{url}"]
    for c in cells:                                         # no other copy of the URL, right or wrong
        src = "".join(c["source"])
        assert set(_colab_links(src)) <= set(badge)
        assert set(re.findall(r"git\+https?://[^\s\"'`)]*", src)) <= {f"git+{url}"}


def test_readme_links_use_the_project_url():
    url, owner, repo = _repo_url()
    readme = (ROOT / "README.md").read_text()
    names = {p.name for p in NOTEBOOKS}
    for link in _colab_links(readme):
        m = re.fullmatch(re.escape(f"{COLAB}{owner}/{repo}/blob/main/notebooks/") + r"(.+\.ipynb)", link)
        assert m and m.group(1) in names, f"README: {link}"
    for req in _pip_requirements(readme):
        if "git+" in req:
            assert re.fullmatch(r"featlab(\[[a-z,]+\])? @ git\+" + re.escape(url), req), f"README: {req}"
    assert set(re.findall(r"git\+https?://[^\s\"'`)]*", readme)) <= {f"git+{url}"}


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


def test_one_version_string():
    """featlab.__version__ (which evaluation resume keys record) is the version pyproject.toml installs."""
    import featlab
    assert featlab.__version__ == _pyproject()["version"]


# a cell that branches on the dataset (``if cifar``, ``... if DATASET == "cifar10" else ...``, a dict indexed by
# DATASET) instead of asking the library for the dataset's defaults (featlab.recipes.lineup)
DATASET_BRANCH = re.compile(r"\bif cifar\b|\bcifar else\b|\bnot cifar\b|DATASET\s*[=!]=|\}\s*\[DATASET\]|cifar\s*=\s*DATASET")
# issue 31 item 5: every notebook asks featlab.recipes (lineup, denoiser_lab, afd_lab, fit) for its dataset's defaults
STILL_BRANCHING: set[str] = set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_one_short_setup_call_per_notebook(path):
    """Issue 31 item 5: one setup call (featlab.recipes.setup: checks, the dataset's defaults, seed, device) in a
    setup cell of at most 12 lines, right after the parameters cell or after one cell of imports."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    p = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    call = f'recipes.setup(globals(), "{path.stem}")'
    setup = [c for c in cells if call in "".join(c["source"])]
    assert len(setup) == 1 and cells.index(setup[0]) in (p + 1, p + 2), f"{path.name}: one {call} after the parameters"
    lines = "".join(setup[0]["source"]).splitlines()
    body = [ln for ln in lines if not ln.startswith(("import ", "from "))]
    assert len(body) <= 12, f"{path.name}: the setup cell has {len(body)} lines besides imports (at most 12)"
    assert all("check_parameters" not in "".join(c["source"]) for c in cells), "recipes.setup checks the parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_notebook_cell_branches_on_the_dataset(path):
    cells = json.loads(path.read_text())["cells"]
    branches = [line.strip() for c in cells if c["cell_type"] == "code"
                for line in "".join(c["source"]).splitlines() if DATASET_BRANCH.search(line)]
    if path.name in STILL_BRANCHING:
        assert branches, f"{path.name} no longer branches on the dataset: take it out of STILL_BRANCHING"
    else:
        assert not branches, f"{path.name} branches on the dataset (use featlab.recipes.lineup): {branches}"
