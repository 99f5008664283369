"""The wheel installs kernels/, models/, bench/ under tritonsagan and nothing else at the top level,
with the shipped weights as package data; the modules import one another without circles."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tritonsagan.models import Generator

from tritonsagan.shipped import CARD_FIGURES_NAME, MODEL_CARD_NAME, SHIPPED_FILES

ROOT = Path(__file__).resolve().parents[1]
WHEEL_AT_MOST_BYTES = 16 * 2**20  # code, and each shipped generator's float16 weights (at most 12 MiB)
FOLDERS = {
    "tritonsagan": "tritonsagan",
    "tritonsagan/data": "tritonsagan.data",
    "kernels": "tritonsagan.kernels",
    "models": "tritonsagan.models",
    "bench": "tritonsagan.bench",
}


def test_wheel_layout_and_shipped_weights(tmp_path):
    """Built from the tracked files plus a stand-in shipped folder: the wheel carries every shipped
    file (package data) and stays small."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    stand_in = source / "tritonsagan" / "pretrained" / "stand-in"
    Generator(ch=8, num_classes=3).half().save_pretrained(stand_in)
    (stand_in / MODEL_CARD_NAME).write_text("# stand-in\n")
    (stand_in / CARD_FIGURES_NAME).write_text("{}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tritonsagan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tritonsagan"}
    for module in ("kernels/attention.py", "kernels/spectral_norm.py", "models/generator.py", "bench/__init__.py"):
        assert f"tritonsagan/{module}" in names
    shipped = sorted(
        str(p.relative_to(source)) for p in (source / "tritonsagan" / "pretrained").rglob("*") if p.is_file()
    )
    assert {f"tritonsagan/pretrained/stand-in/{name}" for name in SHIPPED_FILES} <= set(shipped)
    assert set(shipped) <= set(names), sorted(set(shipped) - set(names))
    assert wheel.stat().st_size <= WHEEL_AT_MOST_BYTES, wheel.stat().st_size


def _import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (lazy imports included), by
    installed name. A subpackage's __init__ is a module of the package's name (importing the package
    runs it); the top package's, which re-exports the public API for users, is left out."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            if path.stem != "__init__":
                modules[f"{package}.{path.stem}"] = path
            elif package != "tritonsagan":
                modules[package] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                imported |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        # A module's own package has run its __init__ before the module: no dependency of it.
        own_package = name.rsplit(".", 1)[0]
        graph[name] = {m for m in imported if m in modules and m not in (name, own_package)}
    return graph


def test_no_import_circles():
    graph = _import_graph()
    assert (
        "tritonsagan.data.packed_reader" in graph["tritonsagan.data.loader"]
        and "tritonsagan.data.stream" in graph["tritonsagan.data.packed_reader"]
    )  # the graph sees imports
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", "import circle: " + " -> ".join([*path[path.index(target) :], target])
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
