"""The architecture, pinned by reading the source.

``orchestrator/`` is the upper layer and ``workers/`` the lower one. These tests pin the rules the
two packages are built to: no import cycles inside a package; the workers never import the
orchestrator; function-level imports only where they buy start-up time (and say so); small
modules and functions; only the store talks to Redis; Redis keys, task ids and task names are
built in ``workers/names.py`` alone; branching on the pattern happens behind the
``workers/patterns/`` seam; every error class declares typed fields; and
``docs/architecture.md`` names modules that exist.

Everything except the error test works on the AST of the files, so the rules hold for code
that never runs in a test (function bodies, error paths, TYPE_CHECKING blocks).
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import itertools
import re
import tokenize
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from workers import errors, models

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers")

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# The store owns the Redis client; workers/scripts.py loads the Lua scripts the store runs.
# Everything else (workers/errors.py and orchestrator/embedded/ included) goes through the store,
# so a path listed here is the whole allowance: a directory ends with "/", a file is exact.
REDIS_ALLOWED = ("workers/store/", "workers/scripts.py")

# The one module that names every Redis key, task id and task name, and the store that uses them.
NAMING_ALLOWED = ("workers/names.py", "workers/store/")

# Behind this seam a pattern may be told apart from another; outside it, code asks the seam.
PATTERN_SEAM = ("workers/patterns/",)

PATTERN_MEMBERS = frozenset({"SPAWN", "GATHER", "RACE"})
PATTERN_VALUES = frozenset({"parallel-spawn", "gather-then-merge", "race-then-cancel"})
TASK_NAME_PREFIXES = ("agents.", "mergers.", "batch.")
TASK_NAMES = frozenset({"orchestrator.run", "orchestrator.deadline"})

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
STARTUP_WORDS = re.compile(r"start-?up|import[- ]time", re.IGNORECASE)
LONG_MODULE = re.compile(r"#\s*long module:\s*\S")
LONG_FUNCTION = re.compile(r"#\s*long function:\s*\S")


# --- one source walker --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Module:
    """One parsed source file of a package."""

    name: str
    rel: str
    is_package: bool
    tree: ast.Module
    lines: tuple[str, ...]
    comments: dict[int, str]

    def where(self, node: ast.stmt | ast.expr | ast.pattern) -> str:
        return f"{self.rel}:{node.lineno}"

    def comment_block_above(self, lineno: int) -> list[str]:
        """The comment-only lines directly above ``lineno`` (a wrapped comment is one comment)."""
        found: list[str] = []
        line = lineno - 1
        while line >= 1 and self.lines[line - 1].lstrip().startswith("#"):
            found.append(self.comments.get(line, ""))
            line -= 1
        return found


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _comments(source: str) -> dict[int, str]:
    # tokenize, not str.find("#"): a "#" inside a string literal is no comment.
    return {
        tok.start[0]: tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }


@functools.cache
def _modules(package: str) -> tuple[Module, ...]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        source = path.read_text(encoding="utf-8")
        found.append(
            Module(
                name=_module_name(rel),
                rel=rel.as_posix(),
                is_package=path.name == "__init__.py",
                tree=ast.parse(source, filename=str(rel)),
                lines=tuple(source.splitlines()),
                comments=_comments(source),
            )
        )
    return tuple(found)


def _all_modules() -> tuple[Module, ...]:
    return tuple(m for package in PACKAGES for m in _modules(package))


@functools.cache
def _nodes(module: Module) -> tuple[ast.AST, ...]:
    """Every node of the module in source order, so reports read top to bottom."""
    return tuple(
        sorted(
            ast.walk(module.tree),
            key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)),
        )
    )


@functools.cache
def _known_names() -> frozenset[str]:
    return frozenset(m.name for m in _all_modules())


def _under(module: Module, allowed: Sequence[str]) -> bool:
    return any(module.rel == a or (a.endswith("/") and module.rel.startswith(a)) for a in allowed)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: documentation, not code that builds anything."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


# --- imports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSite:
    node: ast.Import | ast.ImportFrom
    in_function: bool
    type_checking: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _visit_imports(
    node: ast.AST, in_function: bool, type_checking: bool, out: list[ImportSite]
) -> None:
    if isinstance(node, ast.Import | ast.ImportFrom):
        out.append(ImportSite(node, in_function, type_checking))
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        # The body never runs; the else branch does.
        for stmt in node.body:
            _visit_imports(stmt, in_function, True, out)
        for stmt in node.orelse:
            _visit_imports(stmt, in_function, type_checking, out)
        return
    inner = in_function or isinstance(node, FUNCTIONS)
    for child in ast.iter_child_nodes(node):
        _visit_imports(child, inner, type_checking, out)


@functools.cache
def _import_sites(module: Module) -> tuple[ImportSite, ...]:
    out: list[ImportSite] = []
    _visit_imports(module.tree, False, False, out)
    return tuple(out)


def _longest_known(dotted: str) -> str:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in _known_names():
            return candidate
    return dotted


def _import_targets(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement runs, by absolute name (the edges of the graph)."""
    if isinstance(node, ast.Import):
        return [_longest_known(alias.name) for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    known = _known_names()
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
    ]


def _dynamic_imports(module: Module) -> Iterator[tuple[ast.Call, str]]:
    for node in _nodes(module):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        arg = node.args[0]
        dynamic = name in {"import_module", "__import__"} and isinstance(arg, ast.Constant)
        if dynamic and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            yield node, arg.value


# --- one graph builder --------------------------------------------------------------------------

Graph = dict[str, dict[str, int]]


def _import_graph(package: str) -> Graph:
    """Module -> imported module -> line of the first such import, inside ``package``."""
    modules = _modules(package)
    names = {m.name for m in modules}
    graph: Graph = {m.name: {} for m in modules}
    for module in modules:
        for site in _import_sites(module):
            if site.type_checking:
                continue
            for target in _import_targets(module, site.node):
                if target in names and target != module.name:
                    graph[module.name].setdefault(target, site.node.lineno)
    return graph


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm: every strongly connected component, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _shortest_cycle(graph: Graph, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first member (breadth-first, inside it)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


# --- 1-3: imports -------------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package: str) -> None:
    graph = _import_graph(package)
    rel = {m.name: m.rel for m in _modules(package)}
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _shortest_cycle(graph, component)
        edges = ", ".join(
            f"{rel[a]}:{graph[a][b]} imports {b}" for a, b in itertools.pairwise(cycle)
        )
        whole = (
            f"; the whole tangle: {', '.join(component)}" if len(cycle) - 1 < len(component) else ""
        )
        cycles.append(f"{' -> '.join(cycle)}\n    ({edges}{whole})")
    assert not cycles, f"import cycles inside {package}/:\n  " + "\n  ".join(cycles)


def test_workers_never_import_orchestrator() -> None:
    offenders = []
    for module in _modules("workers"):
        for site in _import_sites(module):
            for target in _import_targets(module, site.node):
                if target.split(".")[0] == "orchestrator":
                    offenders.append(f"{module.where(site.node)} imports {target}")
        for call, target in _dynamic_imports(module):
            if target.split(".")[0] == "orchestrator":
                offenders.append(f"{module.where(call)} imports {target} dynamically")
    assert not offenders, "the lower layer imports the upper one:\n  " + "\n  ".join(offenders)


def test_function_level_imports_say_why() -> None:
    offenders = []
    for module in _all_modules():
        for site in _import_sites(module):
            if not site.in_function or site.type_checking:
                continue
            node = site.node
            span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            said = [module.comments.get(line, "") for line in span]
            said += module.comment_block_above(node.lineno)
            if not any(STARTUP_WORDS.search(comment) for comment in said):
                shown = module.lines[node.lineno - 1].strip()
                offenders.append(f"{module.where(node)}: {shown}")
    assert not offenders, (
        "function-level imports without a comment (same line or directly above) saying what "
        "start-up time they buy; move them to module level or say why:\n  " + "\n  ".join(offenders)
    )


# --- 4: size ------------------------------------------------------------------------------------


def _function_excused(module: Module, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    top = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    said = [module.comments.get(line, "") for line in range(top, fn.lineno + 1)]
    said += module.comment_block_above(top)
    return any(LONG_FUNCTION.search(comment) for comment in said)


def test_modules_are_small_rooms() -> None:
    offenders = []
    for module in _all_modules():
        head = [module.comments.get(line, "") for line in range(1, 31)]
        long_ok = any(LONG_MODULE.search(comment) for comment in head)
        if len(module.lines) > MAX_MODULE_LINES and not long_ok:
            offenders.append(f"{module.rel}: {len(module.lines)} lines (> {MAX_MODULE_LINES})")
        for fn in _nodes(module):
            if not isinstance(fn, FUNCTIONS):
                continue
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES and not _function_excused(module, fn):
                offenders.append(
                    f"{module.where(fn)} {fn.name}(): {length} lines (> {MAX_FUNCTION_LINES})"
                )
    assert not offenders, (
        "split these up, or give the reason in '# long module: ...' (first 30 lines) or "
        "'# long function: ...' (at the def):\n  " + "\n  ".join(offenders)
    )


# --- 5-7: who may do what -----------------------------------------------------------------------


def _redis_imports(module: Module) -> Iterator[tuple[ast.stmt, str]]:
    for site in _import_sites(module):
        node = site.node
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "redis":
                    yield node, alias.name
        elif node.level == 0 and node.module and node.module.split(".")[0] == "redis":
            yield node, node.module


def test_only_the_store_talks_to_redis() -> None:
    offenders = []
    for module in _all_modules():
        if _under(module, REDIS_ALLOWED):
            continue
        for node, name in _redis_imports(module):
            offenders.append(f"{module.where(node)} imports {name}")
        for attr in _nodes(module):
            if isinstance(attr, ast.Attribute) and attr.attr == "r":
                # store.r is the raw client the store holds; reaching for it bypasses the store.
                offenders.append(
                    f"{module.where(attr)} reaches for a raw client: {ast.unparse(attr)}"
                )
    assert not offenders, (
        f"only {', '.join(REDIS_ALLOWED)} may talk to Redis; go through the store:\n  "
        + "\n  ".join(offenders)
    )


def _ends_in_an_id(value: ast.expr) -> bool:
    name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", "")
    return isinstance(name, str) and (name == "id" or name.endswith("_id"))


def _naming_shape(fstring: ast.JoinedStr) -> str | None:
    """Why an f-string looks like a task id, or None."""
    parts = fstring.values
    for i, part in enumerate(parts):
        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
            continue
        text = part.value
        if literal := _naming_literal(text):
            return literal
        if re.search(r"\.(merge|coordinator|group)\b", text):
            return f"literal {text!r}"
        prev_part = parts[i - 1] if i else None
        next_part = parts[i + 1] if i + 1 < len(parts) else None
        if not isinstance(prev_part, ast.FormattedValue):
            continue
        if re.match(r"\.b(\d|$)", text):
            return "a '.b' batch id after a value"
        # "{run_id}.{i}" only when the value is an id: "{module}.{qualname}" names no task.
        dotted = re.fullmatch(r"\.\w*", text) is not None
        if dotted and isinstance(next_part, ast.FormattedValue) and _ends_in_an_id(prev_part.value):
            return "the '{id}.{n}' task id shape"
    return None


def _naming_literal(text: str) -> str | None:
    """Why a literal (or a literal part of an f-string) looks like a task name or key, or None."""
    if text.startswith(TASK_NAME_PREFIXES) or text in TASK_NAMES:
        return f"task name {text!r}"
    if ":run:" in text:
        return f"key shape {text!r}"
    if re.fullmatch(r"\.(merge|coordinator|group|b)", text):
        # run_id + ".merge" builds the same task id as the f-string does.
        return f"task id suffix {text!r}"
    return None


def test_keys_and_task_ids_are_built_in_one_place() -> None:
    offenders = []
    for module in _all_modules():
        if _under(module, NAMING_ALLOWED):
            continue
        # Docstrings document; the parts of an f-string are judged with the f-string.
        skip = _docstrings(module.tree) | {
            id(part)
            for node in _nodes(module)
            if isinstance(node, ast.JoinedStr)
            for part in ast.walk(node)
            if part is not node
        }
        for node in _nodes(module):
            if isinstance(node, ast.JoinedStr):
                why = _naming_shape(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                why = None if id(node) in skip else _naming_literal(node.value)
            else:
                continue
            if why:
                offenders.append(f"{module.where(node)}: {why}: {ast.unparse(node)[:80]}")
    assert not offenders, (
        f"keys, task ids and task names are built in {NAMING_ALLOWED[0]} only:\n  "
        + "\n  ".join(offenders)
    )


def _names_a_pattern(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in PATTERN_MEMBERS:
        owner = node.value
        return (isinstance(owner, ast.Name) and owner.id == "Pattern") or (
            isinstance(owner, ast.Attribute) and owner.attr == "Pattern"
        )
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in PATTERN_VALUES
    if isinstance(node, ast.Set | ast.Tuple | ast.List):
        return any(_names_a_pattern(element) for element in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        # frozenset({Pattern.SPAWN, ...}) as an `in` target is the same branch.
        return node.func.id in {"frozenset", "set", "tuple"} and any(
            map(_names_a_pattern, node.args)
        )
    return False


def _pattern_branches(module: Module) -> Iterator[tuple[ast.stmt | ast.expr | ast.pattern, str]]:
    for node in _nodes(module):
        if isinstance(node, ast.Compare):
            if any(_names_a_pattern(side) for side in (node.left, *node.comparators)):
                yield node, ast.unparse(node)
        elif isinstance(node, ast.Match):
            for case in node.cases:
                for sub in ast.walk(case.pattern):
                    if isinstance(sub, ast.MatchValue) and _names_a_pattern(sub.value):
                        yield sub, f"case {ast.unparse(sub.value)}"


def test_no_pattern_branching_outside_the_seam() -> None:
    offenders = [
        f"{module.where(node)}: {shown[:80]}"
        for module in _all_modules()
        if not _under(module, PATTERN_SEAM)
        for node, shown in _pattern_branches(module)
    ]
    assert not offenders, (
        f"branching on the pattern outside {PATTERN_SEAM[0]}; ask the seam instead:\n  "
        + "\n  ".join(offenders)
    )


# --- 8: errors ----------------------------------------------------------------------------------


class NoSample(Exception):
    """No sample value can be derived for a parameter."""


def _without_none(hint: object) -> tuple[object, bool]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(rest) < len(typing.get_args(hint))
        return (rest[0] if len(rest) == 1 else hint), optional
    return hint, False


def _sample(param: inspect.Parameter, hint: object, n: int) -> object:
    """A value of the hinted type, distinct per parameter so swapped fields show."""
    base, optional = _without_none(hint)
    origin = typing.get_origin(base) or base
    if base is bool:
        return True
    samples: dict[object, object] = {
        str: f"{param.name}-sample",
        int: 10 + n,
        float: 10.5 + n,
        list: [],
        dict: {},
        tuple: (),
    }
    if origin in samples:
        return samples[origin]
    if optional or base is typing.Any:
        return None
    if param.default is not inspect.Parameter.empty:
        return param.default
    raise NoSample(f"{param.name}: {hint!r}")


def _error_classes() -> list[type[BaseException]]:
    roots = (errors.OrchestratorError, errors.TaskCancelled)
    found = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, roots)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def _check_error(cls: type[BaseException]) -> list[str]:
    name = cls.__name__
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        where = cls.__init__.__qualname__
        return [f"{name}: {where} takes **kwargs; declare each field as a typed parameter"]
    try:
        # Forward references (RunFailed.result: RunResult) resolve in the lower layer's models.
        hints = typing.get_type_hints(cls.__init__, {**vars(models), **vars(errors)})
    except Exception as exc:
        return [f"{name}.__init__: its annotations do not resolve ({exc!r})"]
    problems = [f"{name}.__init__({p.name}) has no type" for p in params if p.name not in hints]
    fields = [p for p in params if p.kind is not p.VAR_POSITIONAL]
    positional = [p for p in fields if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if problems or not positional:
        return problems or [f"{name}.__init__ takes no message (its first positional parameter)"]
    message = positional[0]
    try:
        values = {message.name: f"{name} went wrong: check this"} | {
            p.name: _sample(p, hints[p.name], n) for n, p in enumerate(fields[1:])
        }
    except NoSample as exc:
        return [f"{name}.__init__: no sample value derivable for {exc}"]
    args = [values[p.name] for p in fields if p.kind is p.POSITIONAL_ONLY]
    kwargs = {p.name: values[p.name] for p in fields if p.kind is not p.POSITIONAL_ONLY}
    catch_as: type[BaseException] = (
        errors.OrchestratorError if issubclass(cls, errors.OrchestratorError) else BaseException
    )
    try:
        made = cls(*args, **kwargs)
    except Exception as exc:
        return [f"{name}(*{args!r}, **{kwargs!r}) raised {exc!r}"]
    try:
        raise made
    except catch_as as caught:
        err = caught
    if str(err) != values[message.name]:
        problems.append(f"str({name}(...)) is {str(err)!r}, not the message")
    for field, passed in values.items():
        if not hasattr(err, field) or getattr(err, field) != passed:
            got = getattr(err, field, "<missing>")
            problems.append(f"{name}.{field} is {got!r}, not the {passed!r} passed in")
    return problems


def test_every_error_declares_typed_fields() -> None:
    classes = _error_classes()
    assert errors.TaskCancelled in classes and errors.OrchestratorError in classes
    problems = [problem for cls in classes for problem in _check_error(cls)]
    assert not problems, "workers/errors.py:\n  " + "\n  ".join(problems)
    # getattr: the field is what is pinned, so a missing one must fail here, not in mypy.
    assert getattr(errors.RunNotFound.under("r1", "p"), "run_id", None) == "r1"


# --- 9: docs ------------------------------------------------------------------------------------

BACKTICKED = re.compile(r"`([^`\n]+)`(\()?")
PATH_TOKEN = re.compile(r"(orchestrator|workers)(/[\w.-]+)*/?")
DOTTED_TOKEN = re.compile(r"(orchestrator|workers)(\.\w+)+")


def _bound_names(body: Sequence[ast.stmt]) -> set[str]:
    """Names a module or class body binds (what `module.name` in the docs may point at)."""
    names: set[str] = set()
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(stmt, ast.If | ast.Try):
            names |= _bound_names([*stmt.body, *stmt.orelse])
    return names


def _dotted_exists(dotted: str) -> bool:
    module_name = _longest_known(dotted)
    if module_name not in _known_names():
        return False
    rest = dotted[len(module_name) :].lstrip(".").split(".") if dotted != module_name else []
    if not rest:
        return True
    module = next(m for m in _all_modules() if m.name == module_name)
    if rest[0] not in _bound_names(module.tree.body):
        return False
    classes = [s for s in module.tree.body if isinstance(s, ast.ClassDef) and s.name == rest[0]]
    return len(rest) < 2 or not classes or rest[1] in _bound_names(classes[0].body)


def _task_names() -> set[str]:
    # Task names such as `orchestrator.run` look dotted but name tasks, not modules.
    names = next((m for m in _all_modules() if m.rel == "workers/names.py"), None)
    if names is None:
        return set()
    return {
        n.value
        for n in ast.walk(names.tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_docs_architecture_names_real_modules() -> None:
    doc = ROOT / "docs" / "architecture.md"
    if not doc.is_file():
        pytest.fail("docs/architecture.md is missing")
    stale = []
    tasks = _task_names()
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for match in BACKTICKED.finditer(line):
            token, called = match.group(1).strip(), match.group(2)
            if PATH_TOKEN.fullmatch(token) and "/" in token:
                path = ROOT / token
                ok = path.is_dir() if token.endswith("/") else path.exists()
            elif DOTTED_TOKEN.fullmatch(token) and not called and token not in tasks:
                ok = _dotted_exists(token)
            else:
                continue
            if not ok:
                stale.append(f"docs/architecture.md:{number}: `{token}`")
    assert not stale, "names no module, file or directory in the repo:\n  " + "\n  ".join(stale)
