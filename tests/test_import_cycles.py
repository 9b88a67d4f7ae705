"""No import cycles among the package's modules.

An import inside a function counts too: it only defers the cycle to the first call, and a
cycle is what makes a module's import order matter (a name read from a module that is
still being imported is missing). Cycles were broken by moving code along the lines the
imports cross (training_cli.py out of cli.py, the testing package, the table of built-in
models), and this keeps new ones from coming back.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` (a package is its ``__init__``)."""
    return {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (root / package).rglob("*.py")
    }


def absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` reads from, with a relative one made absolute."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    return ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its file.

    ``from a import b`` counts both ``a`` and ``a.b`` (when it is a module); a name in a
    module counts as the module. The packages ``module`` is in are left out: they are
    imported before it, whatever it imports.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(module, path, node)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """The groups of modules that import one another, directly or not (strongly connected
    components of more than one module), each sorted."""
    modules = modules_of(root, package)
    graph = {module: imports_of(module, path, modules) for module, path in modules.items()}
    # Tarjan's algorithm: a depth-first walk in which a module that reaches back to one
    # still on the stack closes a component.
    index, low, stack, cycles = {}, {}, [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def names_read_from_enclosing_packages(root: Path, package: str) -> list[str]:
    """``from pkg import name`` (not a submodule) in a module inside ``pkg``, as text.

    Not a cycle to the check above, which leaves out the packages a module is in, yet the
    same failure: pkg/__init__.py imports the module before it has defined ``name``. A
    module imports its siblings' own files instead (``from pkg.sibling import name``).
    """
    modules = modules_of(root, package)
    found = []
    for module, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = absolute(module, path, node)
                names = [alias.name for alias in node.names if f"{base}.{alias.name}" not in modules]
                if module.startswith(base + ".") and names:
                    found.append(f"{module}: from {base} import {', '.join(names)}")
    return found


def test_the_package_has_no_import_cycles():
    cycles = import_cycles(ROOT, "lightning_rlhf")
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_reads_names_from_a_package_it_is_in():
    found = names_read_from_enclosing_packages(ROOT, "lightning_rlhf")
    assert not found, "import these from the module that defines them:\n" + "\n".join(found)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


# The three cycles the package once had, in miniature: each must be found.
OLD_CYCLES = {
    # The command line dispatched to the pipeline command, whose fit stage ran the CLI
    # class defined beside the command line: every import inside a function.
    "imports inside functions": (
        {
            "pkg/__init__.py": "",
            "pkg/cli.py": "class CLI: ...\ndef main():\n    from pkg import commands\n",
            "pkg/commands.py": "def pipeline():\n    from pkg.pipeline import run\n",
            "pkg/pipeline.py": "def run():\n    from pkg.cli import CLI\n",
        },
        [["pkg.cli", "pkg.commands", "pkg.pipeline"]],
    ),
    # A registry filled by decorators in the modules it imports to run them.
    "a registry importing its registrants": (
        {
            "pkg/__init__.py": "",
            "pkg/models/__init__.py": "",
            "pkg/models/builtin.py": "def load():\n    from pkg.models import tiny\n",
            "pkg/models/tiny.py": "from .builtin import register\n",
        },
        [["pkg.models.builtin", "pkg.models.tiny"]],
    ),
    # Helpers split over modules that each import the others' names.
    "helpers importing one another": (
        {
            "pkg/__init__.py": "",
            "pkg/testing.py": "def check():\n    from pkg.testing_reward import run\n",
            "pkg/testing_reward.py": "from pkg.testing import make_batch\n",
        },
        [["pkg.testing", "pkg.testing_reward"]],
    ),
}


@pytest.mark.parametrize("files, expected", OLD_CYCLES.values(), ids=OLD_CYCLES.keys())
def test_the_check_finds_each_cycle_the_package_once_had(tmp_path, files, expected):
    write_package(tmp_path, files)
    assert import_cycles(tmp_path, "pkg") == expected


def test_a_module_reading_a_name_from_its_own_package_is_found(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/testing/__init__.py": "from pkg.testing.reward import run\nfrom pkg.testing.samples import make_batch\n",
        "pkg/testing/samples.py": "def make_batch(): ...\n",
        # the first two name the module that defines make_batch; the last two the package
        "pkg/testing/reward.py": (
            "from pkg.testing import samples\nfrom .samples import make_batch\n"
            "from pkg.testing import make_batch\nfrom . import make_batch\n"
        ),
    })
    assert import_cycles(tmp_path, "pkg") == []
    assert names_read_from_enclosing_packages(tmp_path, "pkg") == [
        "pkg.testing.reward: from pkg.testing import make_batch",
        "pkg.testing.reward: from pkg.testing import make_batch",
    ]
