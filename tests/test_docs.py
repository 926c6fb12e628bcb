"""The docs stay in step with the code: the event vocabulary and the self-test table list what the code
has, the layer rules are the import-linter contracts, every page is in the site's nav, the README stays
short and its links lead somewhere, every module the docs name exists (so a module that moves leaves no
dead reference behind), and the site builds with --strict."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import yaml  # mkdocs' own (the dev extra)

from mtld.executor.registry import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 300

LOG_CALL = re.compile(r"\.(?:debug|info|warning|error|exception)\(\s*\"([a-z_]+(?:\.[a-z_]+)+)\"")
SELFTEST_CHECK = re.compile(r"\bSpec\(\s*\"([a-z_]+\.[a-z_]+)\"")
FIRST_CELL = re.compile(r"^\| (`[^|]+) \|", re.M)
DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+)(?:#[^)\s]*)?\)")

# `mtld/queue/status.py`, `mtld/decide/`: not a folder of mtld's own files elsewhere (`~/Library/Logs/mtld/`,
# `$XDG_STATE_HOME/mtld`), hence nothing path-like right before it.
PATH_REF = re.compile(r"(?<![\w./~$-])mtld/[A-Za-z0-9_/]*(?:\.py)?")
# `mtld.decide.policy.after_exit`, `mtld.train`: not `io.mtld.daemon` (a launchd label) nor a file name.
DOTTED_REF = re.compile(r"(?<![\w./-])mtld(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
NOT_MODULES = {ENTRY_POINT_GROUP}  # names that look like a module and are something else
FILE_SUFFIXES = {"jsonl", "json", "toml", "plist", "service", "log", "pid", "db", "png", "md"}


def doc_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def texts() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in [README, *doc_files()]}


# ---------------------------------------------------------------- vocabularies the code defines


def test_every_logged_event_is_in_the_vocabulary():
    logged = {m for path in (ROOT / "mtld").rglob("*.py") for m in LOG_CALL.findall(path.read_text(encoding="utf-8"))}
    first_cells = FIRST_CELL.findall((DOCS / "logs.md").read_text(encoding="utf-8"))
    vocabulary = {name for cell in first_cells for name in re.findall(r"`([a-z_.]+)`", cell)}
    assert len(logged) > 20  # the pattern still finds the log calls
    assert sorted(logged - vocabulary) == []


def test_every_selftest_check_is_in_its_table():
    checks = {m for path in (ROOT / "mtld" / "doctor" / "selftest").rglob("*.py")
              for m in SELFTEST_CHECK.findall(path.read_text(encoding="utf-8"))}
    first_cells = FIRST_CELL.findall((DOCS / "selftest.md").read_text(encoding="utf-8"))
    table = {name for cell in first_cells for name in re.findall(r"`([a-z_]+\.[a-z_]+)`", cell)}
    assert len(checks) > 10  # the pattern still finds the checks
    assert sorted(checks - table) == []
    assert sorted(table - checks) == []


# ---------------------------------------------------------------- the layer rules


def layer_rules() -> dict[str, str]:
    """docs/architecture.md's layer rules: each bullet's bold name -> the rest of the bullet."""
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Layer rules", 1)[1].split("\n## ", 1)[0]
    bullets = re.finditer(r"^- \*\*(.+?)\.?\*\*(.*?)(?=^- |^\S|\Z)", section, re.M | re.S)
    return {m.group(1): m.group(2) for m in bullets}


def test_the_layer_rules_are_the_import_linter_contracts():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    rules = layer_rules()
    assert sorted(rules) == sorted(c["name"].rstrip(".") for c in contracts)
    for contract in contracts:
        text = rules[contract["name"].rstrip(".")]
        if contract["type"] == "layers":
            block = re.search(r"```\n(.*?)```", text, re.S)
            assert block, f"{contract['name']}: the layers as a code block, one a line"
            assert [line.strip() for line in block.group(1).splitlines() if line.strip()] == contract["layers"]
        else:
            named = set(re.findall(r"`([\w.]+)`", text))
            assert sorted(set(contract["source_modules"]) - named) == [], contract["name"]
            assert sorted(set(contract["forbidden_modules"]) - named) == [], contract["name"]


# ---------------------------------------------------------------- the site and the README


def nav_pages(entries: object) -> list[str]:
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    pages = [str(p.relative_to(DOCS)) for p in doc_files()]
    assert len(listed) == len(set(listed))  # no page listed twice
    assert sorted(set(pages) - set(listed)) == []
    assert sorted(set(listed) - set(pages)) == []


def test_readme_links_to_docs_lead_to_files():
    links = DOCS_LINK.findall(README.read_text(encoding="utf-8"))
    assert links
    assert sorted(link for link in links if not (ROOT / link).is_file()) == []


def test_readme_points_at_every_docs_page():
    linked = {link for link in DOCS_LINK.findall(README.read_text(encoding="utf-8"))}
    pages = {str(p.relative_to(ROOT)) for p in doc_files()} - {"docs/index.md"}
    assert sorted(pages - linked) == []


def test_readme_stays_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


def test_quick_start_is_make_demo_and_make_test():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \S+)", section, re.M)
    assert commands[:2] == ["make demo", "make test"]


# ---------------------------------------------------------------- modules the docs name


@cache
def module_file(parts: tuple[str, ...]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defined_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
    return names


def dotted_ref_exists(ref: str) -> bool:
    """`mtld.a.b` is a module (a file or a package), or a module followed by a name defined in it (and,
    for a class, a name defined in the class)."""
    parts = ref.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(tuple(parts[:cut]))
        if path is None:
            continue
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for name in parts[cut:]:
            node = defined_names(body).get(name)
            if node is None:
                return False
            body = node.body if isinstance(node, ast.ClassDef) else []
        return True
    return False


def path_ref_exists(ref: str) -> bool:
    path = ROOT / ref
    return path.exists() or (not ref.endswith(("/", ".py")) and path.with_suffix(".py").is_file())


def module_refs(text: str) -> tuple[set[str], set[str]]:
    paths = {m.rstrip("/") + ("/" if m.endswith("/") else "") for m in PATH_REF.findall(text)}
    dotted = {m for m in DOTTED_REF.findall(text) if m.split(".")[1] not in FILE_SUFFIXES and m not in NOT_MODULES}
    return paths, dotted


def test_the_reference_patterns_find_modules_and_only_modules():
    paths, dotted = module_refs(
        "`mtld/decide/policy.py` and `mtld/memory/`; `mtld.decide.policy.after_exit`, `python -m mtld.train RUN`;"
        " not ~/Library/Logs/mtld/, $XDG_STATE_HOME/mtld/config.toml, io.mtld.daemon.plist, logs/mtld.jsonl.1,"
        " `mtld.jsonl`, 'mtld[ray]' or a sentence about mtld.")
    assert paths == {"mtld/decide/policy.py", "mtld/memory/"}
    assert dotted == {"mtld.decide.policy.after_exit", "mtld.train"}
    assert all(map(path_ref_exists, paths)) and all(map(dotted_ref_exists, dotted))
    assert not dotted_ref_exists("mtld.decide.policy.no_such_rule")
    assert not dotted_ref_exists("mtld.no_such_module")
    assert not path_ref_exists("mtld/no_such_module.py")


def test_every_module_the_docs_name_exists():
    missing = []
    found = 0
    for name, text in texts().items():
        paths, dotted = module_refs(text)
        found += len(paths) + len(dotted)
        missing += [f"{name}: {ref}" for ref in sorted(paths) if not path_ref_exists(ref)]
        missing += [f"{name}: {ref}" for ref in sorted(dotted) if not dotted_ref_exists(ref)]
    assert found > 30  # the patterns still find the references
    assert missing == []


# ---------------------------------------------------------------- the site builds


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
