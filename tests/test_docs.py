"""The documentation site (mkdocs.yml, docs/, README.md), built with --strict as CI builds it: a
broken link, a missing anchor or a renamed function in the API reference fails here. The
commands, options and camkit names that the pages and the README show are checked against the
CLI and the package, so an example cannot drift from the code unnoticed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_TOOLS = ("mkdocs", "material", "mkdocstrings_handlers", "mkdocs_jupyter", "griffe")
MISSING = [m for m in DOC_TOOLS if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"docs tools not installed ({', '.join(MISSING)}); "
                                                      "pip install -e '.[docs]' or bash scripts/docs.sh")

BUILD_LIMIT_S = 90     # measured: 4-8 s on a 2-core machine; a build that takes minutes went wrong
# benchmarks.md records the commands of past measurements as they were run: not checked here
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]

# the public names the API reference must show (each anchor is mkdocstrings' id of the object)
PUBLIC = {
    "api/train": ["camkit.train.loop.train", "camkit.train.loop.TrainResult"],
    "api/explain": ["camkit.explain.explain", "camkit.explain.cam", "camkit.explain.Explanations"],
    "api/run": ["camkit.train.run.load", "camkit.train.run.LoadedModel"],
    "api/verdict": ["camkit.train.verdict.judge", "camkit.train.verdict.Verdict"],
    "api/cam": ["camkit.cam.make_cam", "camkit.cam.BaseCAM", "camkit.cam.CAM", "camkit.cam.GradCAM",
                "camkit.cam.ScoreCAM", "camkit.cam.FullGrad"],
    "api/targets": ["camkit.cam.targets.ClassTarget", "camkit.cam.targets.ContrastTarget"],
    "api/fastai": ["camkit.fastai.cam_learner", "camkit.fastai.cam", "camkit.fastai.show_cam",
                   "camkit.fastai.export_run", "camkit.fastai.verdict", "camkit.fastai.CAMInterpretation"],
    "api/metrics": ["camkit.faithfulness.metrics.pointing_game", "camkit.faithfulness.metrics.deletion_insertion",
                    "camkit.faithfulness.metrics.road"],
    "api/evaluate": ["camkit.evaluate.cam_eval", "camkit.evaluate.evaluate_run", "camkit.evaluate.trust_table"],
}


@dataclass
class Build:
    site: Path
    returncode: int
    log: str
    seconds: float


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Build:
    """`mkdocs build --strict` into a temporary folder, with a `torch` that refuses to be
    imported first on the path: the docstrings are read statically, so building never needs it."""
    tmp = tmp_path_factory.mktemp("docs")
    poison = tmp / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('building the docs imported torch')\n")
    path = os.pathsep.join(p for p in (str(tmp / "poison"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    print(f"docs built in {seconds:.1f} s")
    return Build(tmp / "site", proc.returncode, proc.stdout + proc.stderr, seconds)


def _page(build: Build, name: str) -> str:
    return (build.site / name / "index.html").read_text(encoding="utf-8")


def test_site_builds_with_warnings_as_errors(build):
    problems = [line for line in build.log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert build.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or build.log.splitlines()[-20:])


def test_site_builds_in_well_under_a_minute(build):
    assert build.returncode == 0
    assert build.seconds < BUILD_LIMIT_S, f"the docs took {build.seconds:.0f} s to build (executing notebooks?)"


@pytest.mark.parametrize("page", sorted(PUBLIC))
def test_api_reference_shows_the_public_names(build, page):
    html = _page(build, page)
    missing = [name for name in PUBLIC[page] if f'id="{name}"' not in html]
    assert not missing, f"{page} does not document {missing}"


def test_every_example_notebook_is_a_page():
    shipped = {p.name for p in (ROOT / "examples").glob("*.ipynb")}
    linked = {p.name for p in (ROOT / "docs" / "examples").glob("*.ipynb") if p.resolve().is_file()}
    assert shipped == linked, "docs/examples/ should link every notebook of examples/ (ln -s ../../examples/X.ipynb)"


@pytest.mark.parametrize("notebook", sorted(p.stem for p in (ROOT / "examples").glob("*.ipynb")))
def test_notebook_pages_show_their_stored_outputs(build, notebook):
    cells = json.loads((ROOT / "examples" / f"{notebook}.ipynb").read_text(encoding="utf-8"))["cells"]
    images = sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    html = _page(build, f"examples/{notebook}")
    assert html.count("data:image/png;base64") >= images  # the committed figures, not re-run


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'<img [^>]*src="([^"]+)"', text)


def test_readme_links_and_anchors_resolve(build):
    """README.md is GitHub's front page, outside the site: its relative links must name files
    that exist, and its anchors into docs/*.md headings that the site has."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bad = []
    for link in _links(readme):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        if target and not (ROOT / target).exists():
            bad.append(link)
        elif anchor and target.startswith("docs/") and target.endswith(".md"):
            page = Path(target).relative_to("docs").with_suffix("")
            html = _page(build, "" if page.name == "index" else page.as_posix())
            if f'id="{anchor}"' not in html:
                bad.append(link)
    assert not bad, f"README.md links to what does not exist: {bad}"


def test_html_images_in_the_pages_exist():
    """mkdocs checks Markdown links and images, not the <img> tags that size a picture."""
    missing = [f"{page.name}: {src}" for page in PAGES
               for src in re.findall(r'<img [^>]*src="([^"]+)"', page.read_text(encoding="utf-8"))
               if not (page.parent / src).is_file()]
    assert not missing, missing


def test_readme_keeps_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):   # .ci/run calls the second
        assert any(line.startswith(command) for line in readme), command


# ---------------------------------------------------------------- examples against the code

def _code(text: str) -> list[tuple[str, str]]:
    """(kind, code) for every fenced block (kind: its language) and inline span (kind: '')."""
    out, rest = [], []
    for i, part in enumerate(re.split(r"^```", text, flags=re.M)):
        if i % 2:
            lang, _, body = part.partition("\n")
            out.append((lang.strip(), body.replace("\\\n", " ")))
        else:
            rest.append(part)
    out += [("", span) for span in re.findall(r"`([^`\n]+)`", "".join(rest))]
    return out


def _command_lines() -> list[tuple[str, str]]:
    lines = []
    for page in PAGES:
        for kind, code in _code(page.read_text(encoding="utf-8")):
            for line in code.splitlines():
                if kind in ("bash", "sh", "console"):
                    line = re.sub(r"\s#.*", "", line)
                if re.search(r"(^|\s)camkit\s", line + " "):
                    lines.append((page.name, line.strip()))
    return lines


def _cli():
    import typer

    from camkit.cli import app

    return typer.main.get_command(app)


def _options(cmd) -> dict[str, object]:
    return {opt: p for p in cmd.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")} | {"--help": None}


def _choices(param) -> list[str] | None:
    """An Enum option's values (click keeps them on `type`, typer's own parser on `type_descriptor`)."""
    for holder in (getattr(param, "type", None), getattr(param, "type_descriptor", None)):
        choices = getattr(holder, "choices", None)
        if choices:
            return [str(getattr(c, "value", c)) for c in choices]
    return None


def _check(line: str, root) -> list[str]:
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    if "camkit" not in tokens:
        return []
    tokens = tokens[tokens.index("camkit") + 1:]
    cmd, path = root, ["camkit"]
    while tokens and tokens[0] in (getattr(cmd, "commands", None) or {}):
        cmd = cmd.commands[tokens[0]]
        path.append(tokens.pop(0))
    if len(path) == 1 and tokens and not tokens[0].startswith("-"):
        if re.fullmatch(r"[a-z][a-z-]*", tokens[0]) and tokens[0] not in ("is", "now", "and", "or"):
            return [f"'{line}': no command 'camkit {tokens[0]}'"]
        return []
    known, problems = _options(cmd), []
    for i, token in enumerate(tokens):
        opt = token.strip("[](),`").split("=")[0]
        if not re.fullmatch(r"--[a-z][a-z0-9-]*", opt):
            continue
        if opt not in known:
            problems.append(f"'{line}': {' '.join(path)} has no option {opt}")
            continue
        param = known[opt]
        value = tokens[i + 1].strip("[]") if i + 1 < len(tokens) and "=" not in token else ""
        choices = _choices(param) if param is not None else None
        if choices and value and not value.startswith("-"):
            for choice in value.split("|"):
                if re.fullmatch(r"[a-z0-9][a-z0-9+-]*", choice) and choice not in choices:
                    problems.append(f"'{line}': {opt} has no choice '{choice}'")
    return problems


def test_commands_and_options_in_the_docs_exist():
    root = _cli()
    lines = _command_lines()
    assert len(lines) > 40  # the pages do show commands: the scan itself works
    problems = [f"{page}: {p}" for page, line in lines for p in _check(line, root)]
    assert not problems, "\n".join(problems)


def _griffe_camkit():
    import griffe

    return griffe.load("camkit", search_paths=[str(ROOT)], resolve_aliases=False)


def _exists(pkg, dotted: str) -> bool:
    try:
        pkg[dotted] if dotted else pkg
    except KeyError:
        return False
    return True


def _moved(dotted: str) -> str:
    """A name under an old module path (camkit.MOVED: `camkit.run.load`) at its new one
    (`camkit.train.run.load`), where the finder takes an import of the old path."""
    import camkit

    for old, new in camkit.MOVED.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return dotted


def test_camkit_names_in_the_docs_exist():
    """Every `from camkit.x import a, b` in an example and every camkit.x.y named in code is a
    real module or object (read statically, as the API reference is)."""
    pkg = _griffe_camkit()
    names = set()
    for page in PAGES:
        for _, code in _code(page.read_text(encoding="utf-8")):
            for module, imported in re.findall(r"from (camkit[\w.]*) import ([\w, ]+)", code):
                names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
            names.update(re.findall(r"(?<![\w/.])(camkit(?:\.[A-Za-z_]\w*)+)", code))
    assert len(names) > 20
    missing = sorted(n for n in names if not _exists(pkg, _moved(n).partition(".")[2]))
    assert not missing, f"the docs name what camkit does not have: {missing}"
