"""How the code is shaped, counted from the source with ``ast`` (nothing is imported or run).

    python bench/code_shape.py            # this checkout
    python bench/code_shape.py /other/checkout --json out.json

Prints one table and, with ``--json``, writes the counts and the lists behind them:

- family-member probes: ``getattr``/``hasattr`` on a name that belongs to a model family
  (its adapter's optional members, its module's declarations), and ``__import__`` (goal 0: what a
  family offers is declared in its spec or required by the protocol);
- upward imports: a module inside a package importing a top-level module other than the
  foundations every layer uses (config, errors, quiet) (goal 0);
- function-level imports, and how many of them say why on their line or the line above;
- exception classes that do not derive from UserError and are never caught inside the package
  by name (they reach the user as a traceback; goal 0).
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FOUNDATIONS = {"config", "errors", "quiet"}
# Names a family module or adapter may offer; probing for them means the interface is not declared.
FAMILY_MEMBERS = {
    "objective", "objectives", "label", "text_encoder_lora", "check_precision", "EXPORT_FORMATS", "BASE_LICENSE",
    "TINY_BUILDERS", "TINY_VERSION", "PUBLISHED_ARCHITECTURES", "FAMILY", "Config", "SPEC", "prompt_kwargs",
    "max_text_tokens", "uses_rotary", "patch_size_t", "root", "roots", "family", "trainable_scope", "lora",
}


@dataclass
class Shape:
    modules: int = 0
    lines: int = 0
    family_probes: list[str] = field(default_factory=list)
    upward_imports: list[str] = field(default_factory=list)
    function_imports: list[str] = field(default_factory=list)
    function_imports_explained: int = 0
    uncaught_non_user_errors: list[str] = field(default_factory=list)


def module_parts(path: Path, package: Path) -> list[str]:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(node: ast.AST, parts: list[str], is_init: bool) -> list[list[str]]:
    """Absolute module paths (as parts) that an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".") for alias in node.names]
    anchor = parts if is_init else parts[:-1]
    if node.level:
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = anchor + (node.module.split(".") if node.module else [])
    else:
        base = node.module.split(".")
    return [base + [alias.name] if node.module is None else base for alias in node.names]


def function_imports(tree: ast.AST) -> list[ast.AST]:
    found = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.append(node)
    return list({id(n): n for n in found}.values())


def probe_name(call: ast.Call) -> str | None:
    if not isinstance(call.func, ast.Name):
        return None
    if call.func.id == "__import__":
        return "__import__"
    if call.func.id in ("getattr", "hasattr") and len(call.args) >= 2:
        attr = call.args[1]
        if isinstance(attr, ast.Constant) and attr.value in FAMILY_MEMBERS:
            return f"{call.func.id}(..., {attr.value!r})"
    return None


def exception_classes(trees: dict[str, ast.AST]) -> dict[str, list[str]]:
    """{class name: base names} for every class whose bases name an exception."""
    classes = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
    exceptions = {}

    def is_exception(name: str, seen=()) -> bool:
        if name.endswith(("Error", "Exception", "Interrupt")) and name not in classes:
            return True
        return name in classes and name not in seen and any(is_exception(b, (*seen, name)) for b in classes[name])

    for name, bases in classes.items():
        if any(is_exception(b) for b in bases):
            exceptions[name] = bases
    return exceptions


def derives_from(name: str, target: str, classes: dict[str, list[str]]) -> bool:
    bases = classes.get(name, [])
    return target in bases or any(derives_from(b, target, classes) for b in bases if b in classes)


def caught_names(trees: dict[str, ast.AST]) -> set[str]:
    """Names in ``except`` clauses and in ``isinstance(x, ...)`` tests (how a failure policy handles them)."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            handled = None
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                handled = node.type
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                  and len(node.args) == 2):
                handled = node.args[1]
            if handled is not None:
                for sub in ast.walk(handled):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
                    elif isinstance(sub, ast.Attribute):
                        names.add(sub.attr)
    return names


def measure(root: Path) -> Shape:
    package = root / "t2v_exp"
    shape = Shape()
    sources = {p: p.read_text() for p in sorted(package.rglob("*.py"))}
    trees = {str(p.relative_to(root)): ast.parse(text) for p, text in sources.items()}
    top_level = {p.stem for p in package.glob("*.py")} - {"__init__"}
    for path, text in sources.items():
        where = str(path.relative_to(root))
        tree = trees[where]
        lines = text.splitlines()
        shape.modules += 1
        shape.lines += len(lines)
        parts = module_parts(path, package)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (probe := probe_name(node)):
                shape.family_probes.append(f"{where}:{node.lineno} {probe}")
            if isinstance(node, ast.Import | ast.ImportFrom) and len(parts) > 2:  # inside a package
                for target in imported(node, parts, path.name == "__init__.py"):
                    if len(target) >= 2 and target[0] == "t2v_exp" and target[1] in top_level - FOUNDATIONS:
                        shape.upward_imports.append(f"{where}:{node.lineno} -> t2v_exp.{target[1]}")
        for node in function_imports(tree):
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            explained = "#" in line or above.startswith("#")
            shape.function_imports.append(f"{where}:{node.lineno}{'' if explained else ' (no reason given)'}")
            shape.function_imports_explained += explained
    classes = exception_classes(trees)
    caught = caught_names(trees)
    for name in sorted(classes):
        # Caught by its own name or by a project base class's (ShortClipError as VideoDecodeError).
        handled = name in caught or any(derives_from(name, base, classes) for base in caught & set(classes))
        if not derives_from(name, "UserError", classes) and not handled and name != "UserError":
            shape.uncaught_non_user_errors.append(name)
    shape.upward_imports = sorted(set(shape.upward_imports))
    return shape


def table(shape: Shape) -> str:
    rows = [
        ("modules / lines", f"{shape.modules} / {shape.lines}"),
        ("family-member probes (getattr/hasattr/__import__)", len(shape.family_probes)),
        ("upward imports (package -> top-level module)", len(shape.upward_imports)),
        ("function-level imports (with a reason)",
         f"{len(shape.function_imports)} ({shape.function_imports_explained})"),
        ("exception classes outside UserError, never caught", len(shape.uncaught_non_user_errors)),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--json", help="also write the counts and lists here")
    parser.add_argument("--list", action="store_true", help="print the lists behind the counts")
    args = parser.parse_args()
    shape = measure(Path(args.root))
    print(table(shape))
    if args.list:
        for key in ("family_probes", "upward_imports", "uncaught_non_user_errors", "function_imports"):
            print(f"\n{key}:")
            print("\n".join(f"  {item}" for item in getattr(shape, key)))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(shape), indent=2))


if __name__ == "__main__":
    main()
