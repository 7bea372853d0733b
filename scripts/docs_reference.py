"""Check the hand-written docs/reference.md against the package it documents.

What is checked, in every section but the browser client's (a heading naming a ``.js``):

* A fenced block without an info string is a Python signature block: ``class X(Base):``
  with ``def``/``async def`` lines (``self`` may be written or not), decorators
  (``@classmethod``, ``@dataclass(...)``), dataclass fields, ``NAME = value`` constants and
  ``NAME: type`` attributes, or a bare ``name(params) -> type`` for a function. Each name
  must exist in the package, with the same bases, the same parameters (names, kinds,
  defaults, annotations as text) and return annotation, and the same ``async``-ness.
* A table whose header cells are all empty, under a heading naming a class or module
  (``### `Hub```, ``## Testing helpers: `tornado_live.testing```), lists that object's
  members: `` `async save() -> Self` `` is checked like a ``def`` line, `` `id` `` must exist.
* Every name in ``tornado_live.__all__`` has a heading, and the "Exported names:"
  paragraph lists exactly them.

Annotations are compared as text (the package uses ``from __future__ import annotations``),
after a round trip through ``ast`` so that spacing and quotes do not matter; defaults are
compared by value (``HISTORY`` or ``1000`` for a default of ``HISTORY = 1000``).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import itertools
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
PACKAGE = "tornado_live"

HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<title>.+)$")
CODE_SPAN = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")
EMPTY_HEADER = re.compile(r"^\|(?:[ \t]*\|)+[ \t]*$")
# A member row: `| `spec`, `spec` | ...`; a spec may hold a `|` (`Self | None`).
ROW = re.compile(r"^\| (?P<specs>`[^`]+`(?:, `[^`]+`)*) \|")
WORDS = ("async", "classmethod", "staticmethod")
VARARGS, KWARGS = "variadic positional", "variadic keyword"  # inspect's kind descriptions
MISSING = object()


@dataclass(frozen=True)
class Mismatch:
    """Where reference.md and the code disagree, and how."""

    page: str
    line: int
    problem: str
    documented: str = ""
    actual: str = ""

    def __str__(self) -> str:
        text = f"{self.page}:{self.line}: {self.problem}"
        if self.documented or self.actual:
            text += f"\n    documented: {self.documented}\n    actual:     {self.actual}"
        return text


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # inspect.Parameter.kind.description: "positional-only", "keyword-only", ...
    annotation: str | None
    default: str | None  # as text: the documented source, or repr() of the actual value
    value: Any = MISSING  # the actual default value (unused on the documented side)


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[Param, ...]
    returns: str | None
    is_async: bool
    kind: str  # "function", "method", "classmethod" or "staticmethod"

    def __str__(self) -> str:
        parts: list[str] = []
        previous = ""
        for param in self.params:
            if previous == "positional-only" and param.kind != "positional-only":
                parts.append("/")
            if param.kind == "keyword-only" and previous not in ("keyword-only", VARARGS):
                parts.append("*")
            star = {VARARGS: "*", KWARGS: "**"}.get(param.kind, "")
            text = star + param.name + (f": {param.annotation}" if param.annotation else "")
            if param.default is not None:
                text += f" = {param.default}" if param.annotation else f"={param.default}"
            parts.append(text)
            previous = param.kind
        if previous == "positional-only":
            parts.append("/")
        prefix = "async " * self.is_async
        if self.kind in ("classmethod", "staticmethod"):
            prefix += f"{self.kind} "
        returns = f" -> {self.returns}" if self.returns else ""
        return f"{prefix}{self.name}({', '.join(parts)}){returns}"


# -- the package --------------------------------------------------------------------------


def modules() -> list[ModuleType]:
    """The package and all its submodules, the package first."""
    package = importlib.import_module(PACKAGE)
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        found.append(importlib.import_module(info.name))
    return found


def resolve(name: str, within: list[ModuleType]) -> tuple[Any, ModuleType] | None:
    """The object ``name`` names (a module's dotted name, or a name in one of them)."""
    for module in within:
        if name == module.__name__:
            return module, module
    for module in within:
        if name in vars(module):
            return vars(module)[name], module
    return None


def _text(annotation: Any) -> str | None:
    """An annotation as normalised text."""
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return inspect.formatannotation(annotation)
    try:
        return ast.unparse(ast.parse(annotation, mode="eval"))
    except SyntaxError:
        return annotation


def actual_signature(name: str, member: Any, kind: str) -> Signature:
    """The signature of a function (``kind``: as ``member_kind`` says), ``self`` dropped."""
    function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
    found = inspect.signature(function)
    params = [
        Param(
            p.name,
            p.kind.description,
            _text(p.annotation),
            None if p.default is p.empty else repr(p.default),
            MISSING if p.default is p.empty else p.default,
        )
        for p in found.parameters.values()
    ]
    if kind in ("method", "classmethod") and params and params[0].name in ("self", "cls"):
        params = params[1:]
    is_async = inspect.iscoroutinefunction(inspect.unwrap(function))
    return Signature(name, tuple(params), _text(found.return_annotation), is_async, kind)


def member_kind(member: Any) -> str:
    """How a class attribute found by ``inspect.getattr_static`` is called."""
    if isinstance(member, (classmethod, staticmethod)):
        return type(member).__name__
    if isinstance(member, property):
        return "property"
    return "method" if inspect.isfunction(member) or inspect.isroutine(member) else "attribute"


def instance_attributes(cls: type) -> set[str]:
    """The ``self.<name>`` a package class (or its package bases) assigns in its methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(PACKAGE):
            continue
        for node in ast.walk(ast.parse(inspect.getsource(klass))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            names.update(
                target.attr
                for target in targets
                if isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            )
    return names


def has_attribute(owner: Any, name: str) -> bool:
    if isinstance(owner, ModuleType):
        return name in vars(owner)
    try:
        inspect.getattr_static(owner, name)
        return True
    except AttributeError:
        pass
    annotated = any(name in getattr(klass, "__annotations__", {}) for klass in owner.__mro__)
    return annotated or name in instance_attributes(owner)


# -- the documentation --------------------------------------------------------------------


def documented_signature(node: ast.FunctionDef | ast.AsyncFunctionDef, kind: str) -> Signature:
    """The signature a ``def`` line documents, ``self``/``cls`` dropped."""
    args = node.args

    def param(arg: ast.arg, kind: str, default: ast.expr | None) -> Param:
        annotation = None if arg.annotation is None else ast.unparse(arg.annotation)
        return Param(arg.arg, kind, annotation, None if default is None else ast.unparse(default))

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    params = [
        param(arg, "positional-only" if n < len(args.posonlyargs) else "positional or keyword", d)
        for n, (arg, d) in enumerate(zip(positional, defaults, strict=True))
    ]
    if args.vararg:
        params.append(param(args.vararg, VARARGS, None))
    keywords = zip(args.kwonlyargs, args.kw_defaults, strict=True)
    params += [param(arg, "keyword-only", default) for arg, default in keywords]
    if args.kwarg:
        params.append(param(args.kwarg, KWARGS, None))
    if kind in ("method", "classmethod") and params and params[0].name in ("self", "cls"):
        params = params[1:]
    returns = None if node.returns is None else ast.unparse(node.returns)
    is_async = isinstance(node, ast.AsyncFunctionDef)
    return Signature(node.name, tuple(params), returns, is_async, kind)


def _value(text: str, namespace: dict[str, Any]) -> Any:
    """A documented default's value: a literal, or a (dotted) name in ``namespace``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    first, *rest = text.split(".")
    value = namespace.get(first, MISSING)
    for part in rest:
        value = getattr(value, part, MISSING)
    return value


def difference(documented: Signature, actual: Signature, namespace: dict[str, Any]) -> str | None:
    """What differs between two signatures, or None."""
    if documented.kind != actual.kind:
        return f"is a {actual.kind}, documented as a {documented.kind}"
    if documented.is_async != actual.is_async:
        return "is async" if actual.is_async else "is not async"
    if len(documented.params) != len(actual.params):
        missing = [
            p.name for p in actual.params if p.name not in {d.name for d in documented.params}
        ]
        extra = [p.name for p in documented.params if p.name not in {a.name for a in actual.params}]
        return f"the parameters differ (undocumented: {missing}, not in the code: {extra})"
    for doc, real in zip(documented.params, actual.params, strict=True):
        if (doc.name, doc.kind) != (real.name, real.kind):
            return f"parameter {doc.name!r}: the names or kinds differ"
        if doc.annotation != real.annotation:
            return f"parameter {doc.name!r}: the annotations differ"
        if (doc.default is None) != (real.default is None):
            return f"parameter {doc.name!r}: one has a default, the other none"
        if doc.default is not None:
            value = _value(doc.default, namespace)
            if type(value) is not type(real.value) or value != real.value:
                return f"parameter {doc.name!r}: the defaults differ"
    if documented.returns != actual.returns:
        return "the return annotations differ"
    return None


def _mask(line: str) -> str:
    """``line`` with its strings' contents blanked out (same length), so that a ``#`` or a
    bracket inside a string is not taken for a comment or a nesting."""
    return re.sub(r"\"[^\"]*\"|'[^']*'", lambda found: '"' + " " * (len(found[0]) - 2) + '"', line)


def stub(lines: list[str]) -> str:
    """Signature lines as parseable Python, line for line: ``def f(...) -> T`` (which may
    span lines) gets its ``: ...``, and a bare ``f(...) -> T`` its ``def``."""
    out: list[str] = []
    depth = 0
    head = ""  # the first line of the current statement
    for line in lines:
        if depth == 0:
            if re.match(r"[A-Za-z_]\w*\(", line):
                line = "def " + line
            head = line.lstrip()
        masked = _mask(line)
        code = masked.split("#", 1)[0].rstrip()
        depth += sum(map(code.count, "([{")) - sum(map(code.count, ")]}"))
        if depth == 0 and re.match(r"(async def|def|class) ", head) and not code.endswith(":"):
            line = line[: len(code)] + ": ..." + line[len(code) :]
        out.append(line)
    return "\n".join(out)


# -- the checks ---------------------------------------------------------------------------


class Checker:
    """Walks reference.md and collects its mismatches with the package."""

    def __init__(self, path: Path = REFERENCE) -> None:
        self.path = path
        self.within = modules()
        self.mismatches: list[Mismatch] = []
        self.checked: list[str] = []  # "line: name" of every signature compared

    def fail(self, line: int, problem: str, documented: Any = "", actual: Any = "") -> None:
        page = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        self.mismatches.append(Mismatch(str(page), line, problem, str(documented), str(actual)))

    def run(self) -> list[Mismatch]:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        python = True  # false in a section about live.js
        owner: Any = None  # the class or module the current heading names
        table = False  # in a member table
        fence: tuple[int, str] | None = None  # where the open fenced block starts, its info
        for number, line in enumerate(lines, 1):
            if fence is not None:
                if line.startswith("```") and not line.strip("`").strip():
                    start, info = fence
                    if python and not info:
                        self.block(lines[start : number - 1], start + 1)
                    fence = None
            elif opening := FENCE.match(line):
                fence = (number, opening["info"].strip())
            elif heading := HEADING.match(line):
                if len(heading["level"]) <= 2:
                    python = ".js" not in heading["title"]
                owner = self.named(heading["title"]) if python else None
                table = False
            elif EMPTY_HEADER.match(line):
                table = True
            elif table and line.startswith("|"):
                if not python or (row := ROW.match(line)) is None:
                    continue
                if owner is None:
                    self.fail(number, "a member table under a heading naming no class or module")
                for spec in CODE_SPAN.findall(row["specs"]) if owner is not None else []:
                    self.row(spec, owner, number)
            else:
                table = False
        self.exports(lines)
        return self.mismatches

    def named(self, title: str) -> Any:
        """The class or module a heading names in code, if any."""
        for span in CODE_SPAN.findall(title):
            if (found := resolve(span, self.within)) and inspect.isclass(found[0]):
                return found[0]
            if found and isinstance(found[0], ModuleType):
                return found[0]
        return None

    def namespace(self, owner: Any) -> dict[str, Any]:
        """Where a documented default's names are looked up."""
        if isinstance(owner, ModuleType):
            return {**vars(builtins), **vars(owner)}
        module = importlib.import_module(owner.__module__)
        return {**vars(builtins), **vars(module), **{k: getattr(owner, k) for k in dir(owner)}}

    def compare(self, line: int, documented: Signature, actual: Signature, owner: Any) -> None:
        name = documented.name
        if not isinstance(owner, ModuleType):
            name = f"{owner.__name__}.{name}"
        self.checked.append(f"{line}: {name}")
        if (why := difference(documented, actual, self.namespace(owner))) is not None:
            self.fail(line, f"{name}: {why}", documented, actual)

    # -- member tables

    def row(self, spec: str, owner: Any, line: int) -> None:
        words = spec.split()
        prefixes = list(itertools.takewhile(lambda word: word in WORDS, words))
        rest = " ".join(words[len(prefixes) :])
        found = re.match(r"([A-Za-z_]\w*)(\(.*)?$", rest, re.DOTALL)
        if found is None:
            self.fail(line, f"`{spec}` is neither a name nor a signature")
            return
        name = found[1]
        where = owner.__name__
        if not has_attribute(owner, name):
            self.fail(line, f"{where} has no {name!r}", spec, "-")
            return
        if found[2] is None:
            return  # an attribute, a property or a fixture: that it exists is enough
        try:
            tree = ast.parse(f"{'async ' * ('async' in prefixes)}def {rest}: ...")
        except SyntaxError as error:
            self.fail(line, f"`{spec}` is not a signature: {error.msg}")
            return
        node = tree.body[0]
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if isinstance(owner, ModuleType):
            member, kind = vars(owner)[name], "function"
        else:
            member = inspect.getattr_static(owner, name)
            kind = member_kind(member)
        documented_kind = next((w for w in prefixes if w.endswith("method")), None)
        documented_kind = documented_kind or ("function" if kind == "function" else "method")
        documented = documented_signature(node, documented_kind)
        if kind in ("property", "attribute"):
            self.fail(line, f"{where}.{name} is a {kind}, not a method", documented, name)
            return
        self.compare(line, documented, actual_signature(name, member, kind), owner)

    # -- signature blocks

    def block(self, body: list[str], first: int) -> None:
        """Check a signature block whose first line is line ``first``."""
        try:
            tree = ast.parse(stub(body))
        except SyntaxError as error:
            number = first + (error.lineno or 1) - 1
            self.fail(number, f"not a Python signature: {error.msg}", body[number - first])
            return
        for node in tree.body:
            self.statement(node, first + node.lineno - 1, None)

    def statement(self, node: ast.stmt, line: int, cls: type | None) -> None:
        """One statement of a block, at module level (``cls`` None) or in ``cls``'s body."""
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # the ``...`` of a stub
        if isinstance(node, ast.ClassDef) and cls is None:
            self.klass(node, line)
            return
        name = _target(node)
        if name is None:
            self.fail(line, f"cannot check this statement: {ast.unparse(node)}")
            return
        documented: Any = ast.unparse(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            kind = next((d for d in decorators if d.endswith("method")), "method")
            documented = documented_signature(node, "function" if cls is None else kind)
        owner: type | ModuleType
        if cls is None:
            found = resolve(name, self.within)
            if found is None:
                self.fail(line, f"{PACKAGE} has no {name!r}", documented, "-")
                return
            value, owner = found
        else:
            value, owner = MISSING, cls
            if not has_attribute(cls, name):
                self.fail(line, f"{cls.__name__} has no {name!r}", documented, "-")
                return
            value = inspect.getattr_static(cls, name, MISSING)
        if isinstance(documented, Signature):
            actual_kind = "function" if cls is None else member_kind(value)
            if actual_kind in ("property", "attribute"):
                self.fail(line, f"{name} is a {actual_kind}, not a method", documented, name)
                return
            self.compare(line, documented, actual_signature(name, value, actual_kind), owner)
        elif isinstance(node, ast.AnnAssign):  # an attribute: is it of the documented type?
            kind = _value(ast.unparse(node.annotation).split("[")[0], self.namespace(owner))
            actual = getattr(owner, name, MISSING)
            if inspect.isclass(kind) and actual is not MISSING and not isinstance(actual, kind):
                self.fail(line, f"{name}: the types differ", documented, type(actual).__name__)
        elif isinstance(node, ast.Assign):
            expected = _value(ast.unparse(node.value), self.namespace(owner))
            actual = getattr(owner, name, MISSING)
            if type(expected) is not type(actual) or expected != actual:
                self.fail(line, f"{name}: the values differ", documented, f"{name} = {actual!r}")

    def klass(self, node: ast.ClassDef, line: int) -> None:
        found = resolve(node.name, self.within)
        if found is None or not inspect.isclass(found[0]):
            self.fail(line, f"{PACKAGE} has no class {node.name!r}", f"class {node.name}", "-")
            return
        cls = found[0]
        documented_bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
        actual_bases = [base.__name__ for base in cls.__bases__ if base is not object]
        if documented_bases != actual_bases:
            self.fail(line, f"{cls.__name__}: the bases differ", documented_bases, actual_bases)
        fields: list[tuple[int, ast.AnnAssign]] = []
        for decorator in node.decorator_list:
            self.decorator(decorator, cls, line)
        for statement in node.body:
            number = line + statement.lineno - node.lineno
            if isinstance(statement, ast.AnnAssign) and dataclasses.is_dataclass(cls):
                fields.append((number, statement))
            else:
                self.statement(statement, number, cls)
        if fields:
            self.fields(cls, fields)

    def decorator(self, decorator: ast.expr, cls: type, line: int) -> None:
        call = decorator if isinstance(decorator, ast.Call) else None
        name = ast.unparse(call.func if call else decorator)
        if name not in ("dataclass", "dataclasses.dataclass"):
            self.fail(line, f"cannot check the decorator @{name}")
            return
        if not dataclasses.is_dataclass(cls):
            self.fail(line, f"{cls.__name__} is not a dataclass", f"@{name}", "")
            return
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        for keyword in call.keywords if call else []:
            documented = ast.literal_eval(keyword.value)
            actual: Any = MISSING
            if keyword.arg == "slots":
                actual = "__slots__" in vars(cls)
            elif hasattr(params, str(keyword.arg)):
                actual = getattr(params, str(keyword.arg))
            if documented != actual:
                self.fail(line, f"@dataclass: {keyword.arg} differs", documented, actual)

    def fields(self, cls: type, documented: list[tuple[int, ast.AnnAssign]]) -> None:
        actual = [_field(f) for f in dataclasses.fields(cls)]
        for n, (line, node) in enumerate(documented):
            text = _documented_field(node)
            if n >= len(actual) or text != actual[n]:
                real = actual[n] if n < len(actual) else "(no such field)"
                self.fail(line, f"{cls.__name__}: field {n + 1} differs", text, real)
        if len(actual) > len(documented):
            line = documented[-1][0]
            self.fail(line, f"{cls.__name__}: fields not documented", "", actual[len(documented) :])

    # -- the public names

    def exports(self, lines: list[str]) -> None:
        package = importlib.import_module(PACKAGE)
        public = set(package.__all__)
        headings = {
            span
            for line in lines
            if (heading := HEADING.match(line))
            for span in CODE_SPAN.findall(heading["title"])
        }
        for name in sorted(public - headings):
            self.fail(1, f"no heading for {PACKAGE}.{name}")
        for number, line in enumerate(lines, 1):
            if line.startswith("Exported names:"):
                paragraph = " ".join(lines[number - 1 : lines.index("", number - 1)])
                listed = set(CODE_SPAN.findall(paragraph)) - {PACKAGE}
                if listed != public:
                    self.fail(number, "the exported names differ", sorted(listed), sorted(public))


def _target(node: ast.stmt) -> str | None:
    """The name a ``def``, ``NAME = ...`` or ``NAME: type`` statement defines."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target: ast.expr = node.targets[0]
    elif isinstance(node, ast.AnnAssign):
        target = node.target
    else:
        return None
    return target.id if isinstance(target, ast.Name) else None


FIELD_FLAGS = {"init": True, "repr": True, "hash": None, "compare": True}


def _field_text(name: str, annotation: str, default: str | None, flags: dict[str, Any]) -> str:
    options = [f"{k}={v!r}" for k, v in flags.items() if k in FIELD_FLAGS and v != FIELD_FLAGS[k]]
    if options and default is not None:
        options.insert(0, f"default={default}")
    value = f"field({', '.join(options)})" if options else default
    return f"{name}: {annotation}" + ("" if value is None else f" = {value}")


def _field(field: dataclasses.Field[Any]) -> str:
    """A dataclass field as it would be declared: ``frame: bytes = field(init=False)``."""
    default = None if field.default is dataclasses.MISSING else repr(field.default)
    annotation = _text(field.type) or ""
    flags = {k: getattr(field, k) for k in FIELD_FLAGS}
    return _field_text(field.name, annotation, default, flags)


def _documented_field(node: ast.AnnAssign) -> str:
    name = ast.unparse(node.target)
    annotation = ast.unparse(node.annotation)
    value = node.value
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field"):
        keywords = {str(k.arg): k.value for k in value.keywords}
        default = ast.unparse(keywords.pop("default")) if "default" in keywords else None
        flags = {name: ast.literal_eval(flag) for name, flag in keywords.items()}
        return _field_text(name, annotation, default, flags)
    default = None if value is None else repr(ast.literal_eval(value))
    return _field_text(name, annotation, default, {})


def check_reference(path: Path = REFERENCE) -> list[Mismatch]:
    """Every mismatch between ``path`` (docs/reference.md) and the package."""
    return Checker(path).run()
