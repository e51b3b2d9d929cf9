"""What tests/test_docs.py checks in the README and the chapters of docs/, one function per rule: each parses a
document (fenced blocks, code spans, links, headings) and returns one message per thing it shows a reader that does
not exist (a link or #anchor, a `make` target, a `python -m` module, a stage instance, a repository path, a dotted
name of the project's modules), naming the file, the line and what was expected. Torch-free and offline."""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 12_288
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("pipeline", "qkv")  # `python -m` modules and dotted names of these must exist in the repository
THIRD_PARTY_MODULES = {"torch.distributed.run", "pytest", "pip", "venv", "dvc", "ruff"}  # `python -m` allowed
PATH_PREFIXES = ("pipeline", "qkv", "docs", "tests", "tools", "profiles", "references", "results", "reports", ".ci")
PLACEHOLDER = re.compile(r"[<>{}*$…]|\.\.\.")  # `<name>`, `{a,b}`, globs, `${var}`, elisions: not checked

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_PREFIXES, _PACKAGES = "|".join(map(re.escape, PATH_PREFIXES)), "|".join(PACKAGES)
PATH = re.compile(rf"(?<![\w./~-])((?:{_PREFIXES})/[^\s`'\"(),;:|\]]*)")
DOTTED = re.compile(rf"(?<![\w./-])((?:{_PACKAGES})(?:\.[A-Za-z_]\w*)+)")
PYTHON_M = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+-m\s+([A-Za-z_][^\s`'\"(),;]*)")
INNER_M = re.compile(rf"(?<=\s)-m\s+((?:{_PACKAGES})\b[^\s`'\"(),;]*)")  # a launcher's `... -m pipeline.x`
MAKE = re.compile(r"(?:^|(?<=[\s(;&|]))make\s+(.*)")
STAGE_ARG = re.compile(r"\bSTAGE=(\S+)")


@dataclass(frozen=True)
class Code:
    """A piece of code a document shows: an inline span or one line of a fenced block."""

    line: int
    text: str


@dataclass(frozen=True)
class Doc:
    name: str  # as the messages name it: README.md, docs/report.md
    folder: Path  # what its relative links are relative to
    prose: str  # the text with fenced blocks blanked and code spans replaced by spaces (line numbers kept)
    code: tuple[Code, ...]
    headings: tuple[str, ...]
    root: Path = ROOT  # links must stay inside it


def parse(name: str, text: str, folder: Path, root: Path = ROOT) -> Doc:
    """Split Markdown into prose, code (spans and fenced lines, each with its line number) and headings."""
    prose, code, headings, fence = [], [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            prose.append("")
        elif fence is not None:
            stripped = line.strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                fence = None
            else:
                code.append(Code(number, line))
            prose.append("")
        else:
            prose.append(line)
            h = HEADING.match(line)
            if h:
                headings.append(h.group(2))
    text = "\n".join(prose)
    for m in CODE_SPAN.finditer(text):
        if "\n\n" not in m.group(2):
            code.append(Code(text.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())))
    blank = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)) if "\n\n" not in m.group(2) else m.group(0), text)
    return Doc(name, folder, blank, tuple(sorted(code, key=lambda c: c.line)), tuple(headings), root)


def load(path: Path) -> Doc:
    return parse(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"), path.parent)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lower-cased, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(headings) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings:
        s = slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


@cache
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_][^:=#\s]*(?:[ \t]+[A-Za-z0-9_][^:=#\s]*)*)[ \t]*::?(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return frozenset(targets)


def _resolve(expr, params: dict) -> list:
    """A dvc.yaml `foreach`/matrix value (`${datasets}`, `${pretrain.variants}` or a literal) in one profile."""
    if isinstance(expr, str) and (m := re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", expr)):
        value = params
        for key in m.group(1).split("."):
            value = value[key]
        expr = value
    return list(expr) if isinstance(expr, dict | list) else [expr]


def profiles() -> dict[str, dict]:
    """Every profile of profiles/, and the test suite's tiny profile (tests/tiny.py: the test cluster's example)."""
    from tests.tiny import tiny_params

    found = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "profiles").glob("*.yaml"))}
    return {**found, "tests/tiny.py": tiny_params()}


def instances(params: dict) -> set[str]:
    """The stage instances dvc.yaml gives one params file: `foreach` and `matrix` resolved as DVC names them."""
    names = set()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            names.update(f"{name}@{item}" for item in _resolve(stage["foreach"], params))
        elif "matrix" in stage:
            axes = [_resolve(v, params) for v in stage["matrix"].values()]
            names.update(f"{name}@" + "-".join(map(str, combo)) for combo in itertools.product(*axes))
        else:
            names.add(name)
    return names


@cache
def stages() -> tuple[frozenset[str], frozenset[str]]:
    """(every stage instance of every profile, the names of the stages that are not foreach/matrix stages)."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    plain = frozenset(name for name, s in dvc.items() if "foreach" not in s and "matrix" not in s)
    return frozenset(set(plain).union(*(instances(p) for p in profiles().values()))), plain


def _clean(token: str) -> str:
    return token.strip("\"'`").rstrip(".,:;)")


def _shell_words(text: str) -> list[str]:
    text = re.sub(r"(^|\s)#.*", "", text)  # a shell comment
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def where(doc: Doc, line: int) -> str:
    return f"{doc.name}:{line}"


# ---- the checks: each returns one message per problem, naming the file, the offending text and what is expected


def check_links(doc: Doc) -> list[str]:
    problems = []
    found = [(m.start(), m.group(1)) for m in LINK.finditer(doc.prose)]
    found += [(m.start(), m.group(1)) for m in REF_LINK.finditer(doc.prose)]
    for offset, target in found:
        line = doc.prose.count("\n", 0, offset) + 1
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.folder / path).resolve() if path else None
        if file is not None:
            if not file.is_relative_to(doc.root):
                problems.append(f"{where(doc, line)}: link ({target}) points outside the repository")
                continue
            if not file.exists():
                rel = file.relative_to(doc.root).as_posix()
                problems.append(f"{where(doc, line)}: link ({target}) resolves to {rel}, which does not exist")
                continue
        if anchor and (file is None or file.suffix == ".md"):
            heads = doc.headings if file is None else parse("", file.read_text(encoding="utf-8"), file.parent).headings
            if anchor not in anchors(heads):
                into = doc.name if file is None else file.relative_to(doc.root).as_posix()
                problems.append(
                    f"{where(doc, line)}: link ({target}): #{anchor} matches no heading of {into} "
                    f"(expected one of: {', '.join(sorted(anchors(heads)))})"
                )
    return problems


def check_make(doc: Doc) -> list[str]:
    problems = []
    for c in doc.code:
        for m in MAKE.finditer(c.text):
            for word in _shell_words(m.group(1)):
                if word in ("&&", "||", ";", "|") or word.startswith("-") or "=" in word:
                    if word in ("&&", "||", ";", "|"):
                        break
                    continue
                target = _clean(word)
                if target and not PLACEHOLDER.search(target) and target not in make_targets():
                    problems.append(
                        f"{where(doc, c.line)}: `{c.text}` runs `make {target}`, which is no target of the Makefile "
                        f"(targets: {', '.join(sorted(make_targets()))})"
                    )
                break  # the first word that is not a variable or an option is the target
    return problems


def module_problem(name: str) -> str | None:
    """Why ``python -m name`` cannot run from this repository, or None."""
    if name.split(".")[0] not in PACKAGES:
        if name in THIRD_PARTY_MODULES:
            return None
        allowed = ", ".join(sorted(THIRD_PARTY_MODULES))
        return f"not a module of {'/'.join(PACKAGES)} nor an allowed third-party module ({allowed})"
    base = ROOT.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return None
    if (base / "__init__.py").is_file():
        if (base / "__main__.py").is_file():
            return None
        return f"{base.relative_to(ROOT)}/ is a package without __main__.py"
    return f"expected {base.relative_to(ROOT)}.py or {base.relative_to(ROOT)}/__main__.py"


def check_modules(doc: Doc) -> list[str]:
    problems = []
    for c in doc.code:
        names = {_clean(m.group(1)) for m in PYTHON_M.finditer(c.text)}
        names |= {_clean(m.group(1)) for m in INNER_M.finditer(c.text)}
        for name in sorted(n for n in names if not PLACEHOLDER.search(n)):
            if (why := module_problem(name)) is not None:
                problems.append(f"{where(doc, c.line)}: `{c.text}` runs `python -m {name}`: {why}")
    return problems


def check_stages(doc: Doc) -> list[str]:
    names, plain = stages()
    stage_names = sorted({n.partition("@")[0] for n in names})
    instance = re.compile(rf"(?<![\w/.-])((?:{'|'.join(stage_names)})@[^\s`'\"(),;\]]+)")
    problems = []

    def check(c: Code, text: str, how: str) -> None:
        text = _clean(text)
        if not text or PLACEHOLDER.search(text) or text in names or (c.line, text) in seen:
            return
        seen.add((c.line, text))
        stage = text.partition("@")[0]
        like = sorted(n for n in names if n.partition("@")[0] == stage)[:3] or sorted(plain)
        problems.append(
            f"{where(doc, c.line)}: `{c.text}` {how} {text!r}, which is no stage instance of any profile "
            f"(expected a name dvc.yaml gives profiles/*.yaml or tests/tiny.py, e.g. {', '.join(like)})"
        )

    seen: set[tuple[int, str]] = set()
    for c in doc.code:
        for m in instance.finditer(c.text):
            check(c, m.group(1), "names")
        for m in STAGE_ARG.finditer(c.text):
            check(c, m.group(1), "passes STAGE=")
    return problems


def check_paths(doc: Doc) -> list[str]:
    problems = []
    for c in doc.code:
        for m in PATH.finditer(c.text):
            path = m.group(1).rstrip(".")
            if PLACEHOLDER.search(path) or (ROOT / path).exists():
                continue
            problems.append(
                f"{where(doc, c.line)}: `{c.text}` shows the path {path}, which does not exist in the repository"
            )
    return problems


@cache
def module_names(module: str) -> frozenset[str] | None:
    """The top-level names a module of the repository defines or imports, or None if there is no such module."""
    base = ROOT.joinpath(*module.split("."))
    file = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if not file.is_file():
        return None
    names = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def check_dotted(doc: Doc) -> list[str]:
    """`pipeline.data.loaders.build_loaders`, `qkv.convert`: the longest module prefix exists and defines the next
    name."""
    problems = []
    for c in doc.code:
        for m in DOTTED.finditer(c.text):
            parts = m.group(1).split(".")
            for cut in range(len(parts), 0, -1):
                if module_names(".".join(parts[:cut])) is not None:
                    break
            module, rest = ".".join(parts[:cut]), parts[cut:]
            if rest and rest[0] not in module_names(module):
                problems.append(
                    f"{where(doc, c.line)}: `{c.text}` names {m.group(1)}, but {module} defines no {rest[0]!r} "
                    f"(expected a module {module}.{rest[0]} or a top-level name of {module})"
                )
    return problems


CHECKS = [check_links, check_make, check_modules, check_stages, check_paths, check_dotted]
