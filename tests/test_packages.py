"""Packages point one way: data_prep (the dataset build) may use m2e_jax; m2e_jax never imports
data_prep, so the trainer, inference and the web page run from the m2e_jax package alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_prep_imports(package: Path) -> list[str]:
    """'file:line module' for every import of data_prep under `package`, function-local ones included."""
    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            out += [f"{path.relative_to(package)}:{node.lineno} {m}" for m in mods
                    if m == "data_prep" or m.startswith("data_prep.")]
    return out


def test_m2e_jax_never_imports_data_prep():
    assert data_prep_imports(ROOT / "m2e_jax") == []


def test_the_scan_sees_function_local_imports(tmp_path):
    (tmp_path / "mod.py").write_text("def f():\n    from data_prep import build\n"
                                     "    import data_prep.pairing\n")
    (tmp_path / "ok.py").write_text("from m2e_jax import data_schema\nimport data_prepx\n")
    assert data_prep_imports(tmp_path) == ["mod.py:2 data_prep", "mod.py:3 data_prep.pairing"]


def test_m2e_jax_entry_points_import_with_data_prep_unimportable():
    """The modules that read user files import in a process where `import data_prep` fails."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'data_prep':\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import m2e_jax.infer, m2e_jax.preprocess, m2e_jax.input_pipeline, m2e_jax.tfds_source\n"
            "import m2e_jax.readers.photos\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
