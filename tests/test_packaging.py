"""What the package declares matches what it is: license, typing marker, one version, every import declared."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import fastmmgan
from fastmmgan import serve
from fastmmgan.errors import FastMMGANError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SHIPPED = [ROOT / "fastmmgan", ROOT / "kernels", ROOT / "export"]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _third_party_imports() -> set[str]:
    """Top-level names of every module the shipped code imports, minus the standard library and our own."""
    names = set()
    for folder in SHIPPED:
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    # `benchmarks` is the source checkout's folder, which `python -m fastmmgan.bench` runs when it is there.
    ours = {"fastmmgan", "benchmarks", "__future__"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in ours}


def test_license_file_matches_the_declared_license():
    assert PYPROJECT["license"] == "Apache-2.0" and PYPROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text


def test_the_package_is_typed_and_has_one_version():
    assert (ROOT / "fastmmgan" / "py.typed").is_file()
    assert "version" in PYPROJECT["dynamic"] and "version" not in PYPROJECT
    assert importlib.metadata.version("fastmmgan") == fastmmgan.__version__


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    declared = {_requirement_name(r) for r in PYPROJECT["dependencies"]}
    for extra in ("serve", "hf"):
        declared |= {_requirement_name(r) for r in PYPROJECT["optional-dependencies"][extra]}
    distributions = importlib.metadata.packages_distributions()
    imported = _third_party_imports()
    providers = {name: {d.lower() for d in distributions.get(name, [name])} for name in imported}
    undeclared = {name for name, dists in providers.items() if not dists & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
    provided = set().union(*providers.values())
    # onnxruntime-gpu and onnxruntime both provide `onnxruntime`; only one is installed on a given machine.
    # tensorboard is imported through torch.utils.tensorboard.
    indirect = {"tensorboard"}
    unused = {d for d in declared if d not in provided | indirect and not d.startswith("onnxruntime")}
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"


def test_serve_without_its_extra_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    with pytest.raises(FastMMGANError, match=r"the HTTP server needs fastapi: pip install 'fastmmgan\[serve\]'"):
        serve.main(["gen.onnx"])


def test_hf_data_without_its_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    from fastmmgan.tables import open_table

    with pytest.raises(FastMMGANError, match=r"--data hf: needs the datasets package: pip install 'fastmmgan\[hf\]'"):
        open_table(f"hf:{tmp_path}")


def test_bench_entry_point_runs_the_checkout_benchmarks():
    done = subprocess.run([sys.executable, "-m", "fastmmgan.bench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--configs" in done.stdout and "seed-mnist" in done.stdout
