"""Text-analysis agents over the Python standard library's own sources.

Every Python install ships these files, so the demo does real parsing work anywhere with no network
and no data download. Modules are resolved to files and parsed, never imported: importing a stdlib
module can have side effects (``antigravity`` opens a browser, ``this`` prints).
"""

import ast
import io
import keyword
import re
import sys
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from pathlib import Path

from pydantic import BaseModel, Field

from workers.context import AgentContext
from workers.registry import agent, merger, validator

# ASCII-only dotted identifiers: rules out paths ("../x", "/etc") before anything touches the disk.
MODULE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

# Cancellation is checked once per this many tokens / AST nodes: frequent enough to stop within a
# few milliseconds, rare enough that a check which reads Redis stays negligible.
_CHECK_EVERY = 5000

_NON_CODE_TOKENS = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
)

_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


class ModuleRef(BaseModel):
    """A standard library module to analyse, by its dotted import name."""

    module: str = Field(
        min_length=1,
        max_length=200,
        pattern=MODULE_NAME_PATTERN,
        description='Dotted name of a stdlib module with a .py source, e.g. "json.decoder".',
        examples=["difflib", "json.decoder"],
    )


class ModuleStats(BaseModel):
    """Size and shape statistics of one module's source file."""

    module: str = Field(description="The module name that was analysed.")
    path: str = Field(description="Absolute path of the .py file that was read.")
    lines: int = Field(ge=0, description="Physical lines in the file.")
    code_lines: int = Field(
        ge=0, description="Lines spanned by at least one code token (docstrings count as code)."
    )
    comment_lines: int = Field(ge=0, description="Lines holding a # comment (may also hold code).")
    words: int = Field(ge=0, description="Whitespace-separated words, as `wc -w` counts them.")
    functions: int = Field(
        ge=0, description="Function and method definitions, nested ones included."
    )
    classes: int = Field(ge=0, description="Class definitions, nested ones included.")
    top_words: list[tuple[str, int]] = Field(
        description="The 10 most frequent identifiers (keywords excluded) with their counts."
    )
    docstring_coverage: float = Field(
        ge=0.0, le=1.0, description="Share of module + classes + functions that have a docstring."
    )


class Finding(BaseModel):
    """Facts about one topic (here: one module)."""

    topic: str = Field(description="What the facts are about.")
    facts: list[str] = Field(description="Short factual sentences.")


class Report(BaseModel):
    """Findings merged into one report."""

    topics: list[str] = Field(description="Topics in the order the findings were given.")
    facts: list[str] = Field(description='Every fact, prefixed with its topic ("topic: fact").')
    summary: str = Field(description="One line with the totals.")


def stdlib_dir() -> Path:
    """The directory holding the standard library's .py sources."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def resolve_module(module: str) -> Path:
    """The .py source file of a stdlib module; ValueError saying why if there is none."""
    if not re.fullmatch(MODULE_NAME_PATTERN, module):
        raise ValueError(f"module {module!r}: not a dotted module name like 'json.decoder'")
    root = stdlib_dir()
    parts = module.split(".")
    candidates = (
        root.joinpath(*parts[:-1], parts[-1] + ".py"),
        root.joinpath(*parts, "__init__.py"),
    )
    for candidate in candidates:
        # resolve() + is_relative_to guards against a symlink leading out of the stdlib.
        if candidate.is_file() and candidate.resolve().is_relative_to(root):
            return candidate.resolve()
    raise ValueError(f"module {module!r}: {_why_no_source(module, root)}")


def _why_no_source(module: str, root: Path) -> str:
    if module in sys.builtin_module_names:
        return "is built into the interpreter, so it has no .py source; pick a pure-Python module"
    if "." not in module:
        # PathFinder only looks the name up on sys.path; unlike importlib.util.find_spec it
        # never imports anything.
        spec = PathFinder.find_spec(module)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            return (
                f"is a C extension ({origin}), so it has no .py source; pick a pure-Python module"
            )
        if module in sys.stdlib_module_names:
            return f"belongs to the standard library but has no .py source under {root}"
    return f"was not found in the standard library at {root}"


def _load(module: str) -> tuple[Path, str, ast.Module]:
    """Read and parse a module; every failure becomes a ValueError naming the module."""
    path = resolve_module(module)
    try:
        # tokenize.open honours the file's coding cookie, as the interpreter would.
        with tokenize.open(path) as fh:
            text = fh.read()
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"module {module!r} ({path}): cannot be parsed as Python: {exc}") from exc
    return path, text, tree


def _tokens(module: str, text: str) -> Iterator[tokenize.TokenInfo]:
    try:
        yield from tokenize.generate_tokens(io.StringIO(text).readline)
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ValueError(f"module {module!r}: cannot be tokenized: {exc}") from exc


def _walk(tree: ast.AST, ctx: AgentContext) -> Iterator[ast.AST]:
    for index, node in enumerate(ast.walk(tree)):
        if index % _CHECK_EVERY == 0:
            ctx.raise_if_cancelled()
        yield node


@agent(
    "module_stats",
    input=ModuleRef,
    output=ModuleStats,
    description="Line, word, definition and identifier statistics of a stdlib module's source.",
)
def module_stats(ref: ModuleRef, ctx: AgentContext) -> ModuleStats:
    """Tokenize and parse one stdlib module and count what is in it."""
    ctx.raise_if_cancelled()
    path, text, tree = _load(ref.module)
    ctx.progress(0.2, f"read {path.name}")

    code_rows: set[int] = set()
    comment_rows: set[int] = set()
    names: Counter[str] = Counter()
    for index, tok in enumerate(_tokens(ref.module, text)):
        if index % _CHECK_EVERY == 0:
            ctx.raise_if_cancelled()
        if tok.type == tokenize.COMMENT:
            comment_rows.add(tok.start[0])
        elif tok.type not in _NON_CODE_TOKENS:
            # A triple-quoted string spans several rows; all of them are code.
            code_rows.update(range(tok.start[0], tok.end[0] + 1))
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                names[tok.string] += 1
    ctx.progress(0.6, f"tokenized {path.name}")

    functions = classes = documented = 0
    for node in _walk(tree, ctx):
        if isinstance(node, _FunctionNode | ast.ClassDef):
            if isinstance(node, ast.ClassDef):
                classes += 1
            else:
                functions += 1
            documented += ast.get_docstring(node, clean=False) is not None
    documented += ast.get_docstring(tree, clean=False) is not None
    ctx.progress(0.9, f"parsed {path.name}")

    # Ties broken by name so the same file always gives the same list.
    top = sorted(names.items(), key=lambda item: (-item[1], item[0]))[:10]
    return ModuleStats(
        module=ref.module,
        path=str(path),
        lines=len(text.splitlines()),
        code_lines=len(code_rows),
        comment_lines=len(comment_rows),
        words=len(text.split()),
        functions=functions,
        classes=classes,
        top_words=top,
        docstring_coverage=round(documented / (1 + functions + classes), 4),
    )


def _functions_with_qualnames(
    node: ast.AST, prefix: str = ""
) -> Iterator[tuple[str, _FunctionNode]]:
    """Every function under ``node`` with a qualname like ``Class.method.<locals>.helper``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _FunctionNode):
            qualname = prefix + child.name
            yield qualname, child
            yield from _functions_with_qualnames(child, qualname + ".<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions_with_qualnames(child, prefix + child.name + ".")
        else:
            # Definitions also hide inside if/try/with blocks (e.g. platform-specific variants).
            yield from _functions_with_qualnames(child, prefix)


def _imported_modules(tree: ast.Module, ctx: AgentContext) -> list[str]:
    found: set[str] = set()
    for node in _walk(tree, ctx):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return sorted(found)


def _all_names(tree: ast.Module) -> int | None:
    """Length of a literal module-level ``__all__``; -1 if it is computed; None if absent."""
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            if isinstance(value, ast.List | ast.Tuple):
                return len(value.elts)
            return -1
    return None


def _plural(count: int, word: str, plural: str = "") -> str:
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


@agent(
    "module_findings",
    input=ModuleRef,
    output=Finding,
    description="A handful of facts about a stdlib module, computed from its syntax tree.",
)
# long function: one fact after another, each a few lines, reads best as one list
def module_findings(ref: ModuleRef, ctx: AgentContext) -> Finding:
    """Parse one stdlib module and state facts about its structure.

    A module with no statements at all yields no facts, which ``has_facts`` rejects.
    """
    ctx.raise_if_cancelled()
    path, text, tree = _load(ref.module)
    ctx.progress(0.3, f"parsed {path.name}")
    if not tree.body:
        return Finding(topic=ref.module, facts=[])

    facts: list[str] = [f"{_plural(len(text.splitlines()), 'line')} of source in {path.name}"]
    docstring = ast.get_docstring(tree)
    if docstring:
        facts.append(f"module docstring begins: {docstring.strip().splitlines()[0]!r}")

    top_functions = [n for n in tree.body if isinstance(n, _FunctionNode)]
    public_functions = [f.name for f in top_functions if not f.name.startswith("_")]
    facts.append(
        f"{_plural(len(top_functions), 'top-level function')}, {len(public_functions)} public"
        + (f": {_preview(public_functions)}" if public_functions else "")
    )

    classes = [n for n in _walk(tree, ctx) if isinstance(n, ast.ClassDef)]
    public_classes = [
        c.name for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_")
    ]
    facts.append(
        f"{_plural(len(classes), 'class', 'classes')}, {len(public_classes)} public at top level"
        + (f": {_preview(public_classes)}" if public_classes else "")
    )
    if classes:
        widest = max(classes, key=lambda c: sum(isinstance(n, _FunctionNode) for n in c.body))
        methods = sum(isinstance(n, _FunctionNode) for n in widest.body)
        facts.append(f"class with the most methods: {widest.name} ({_plural(methods, 'method')})")

    ctx.raise_if_cancelled()
    functions = list(_functions_with_qualnames(tree))
    if functions:
        name, node = max(
            functions, key=lambda nf: (nf[1].end_lineno or nf[1].lineno) - nf[1].lineno
        )
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        facts.append(
            f"longest function: {name} ({_plural(length, 'line')}, from line {node.lineno})"
        )
        facts.append(
            f"{_plural(len(functions), 'function definition')} in all (methods, nested included)"
        )

    imports = _imported_modules(tree, ctx)
    if imports:
        facts.append(f"imports {_plural(len(imports), 'module')}: {_preview(imports)}")
    else:
        facts.append("imports no modules")

    exported = _all_names(tree)
    if exported is None:
        facts.append("defines no __all__")
    elif exported < 0:
        facts.append("computes __all__ at import time")
    else:
        facts.append(f"__all__ lists {_plural(exported, 'name')}")
    ctx.progress(0.9, f"{len(facts)} facts about {ref.module}")
    return Finding(topic=ref.module, facts=facts)


@merger(
    "merge_findings",
    input=Finding,
    output=Report,
    description="Combine findings into one report: topics in order, facts prefixed by topic.",
)
def merge_findings(findings: list[Finding], ctx: AgentContext) -> Report:
    """Concatenate findings in the order given, tagging each fact with its topic."""
    ctx.raise_if_cancelled()
    topics = [finding.topic for finding in findings]
    facts = [f"{finding.topic}: {fact}" for finding in findings for fact in finding.facts]
    summary = f"{_plural(len(topics), 'topic')}, {_plural(len(facts), 'fact')}"
    empty = [finding.topic for finding in findings if not finding.facts]
    if empty:
        summary += f"; no facts for {', '.join(empty)}"
    return Report(topics=topics, facts=facts, summary=summary)


@validator("has_facts", input=Finding, description="True when the finding has at least one fact.")
def has_facts(finding: Finding) -> bool:
    """Accept a finding only if it states at least one non-blank fact."""
    return any(fact.strip() for fact in finding.facts)
