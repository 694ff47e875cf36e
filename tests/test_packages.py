"""Packages point one way: data_prep (the dataset build) may use m2e_jax; m2e_jax never imports
data_prep, so the trainer, inference and the web page run from the m2e_jax package alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(folder: Path, wanted) -> list[str]:
    """'file:line module' for every import under `folder` (function-local ones included) of a module
    for which `wanted(name)` holds; `from a import b` names both `a` and `a.b`."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            out += [f"{path.relative_to(folder)}:{node.lineno} {m}" for m in dict.fromkeys(mods) if wanted(m)]
    return out


def data_prep_imports(package: Path) -> list[str]:
    return imports(package, lambda m: m.split(".")[0] == "data_prep")


# The commands are thin shells over libraries (the try-on's is m2e_jax/tryon_pipeline.py); none is
# another module's library.
COMMANDS = ("m2e_jax.infer", "m2e_jax.demo", "m2e_jax.evaluate", "m2e_jax.main")


def command_imports(folder: Path) -> list[str]:
    return imports(folder, lambda m: m in COMMANDS)


def test_m2e_jax_never_imports_data_prep():
    assert data_prep_imports(ROOT / "m2e_jax") == []


def test_the_scan_sees_function_local_imports(tmp_path):
    (tmp_path / "mod.py").write_text("def f():\n    from data_prep import build\n"
                                     "    import data_prep.pairing\n")
    (tmp_path / "ok.py").write_text("from m2e_jax import data_schema\nimport data_prepx\n")
    assert data_prep_imports(tmp_path) == ["mod.py:2 data_prep", "mod.py:2 data_prep.build",
                                           "mod.py:3 data_prep.pairing"]


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


def test_no_module_imports_a_command():
    assert command_imports(ROOT / "m2e_jax") == []
    assert command_imports(ROOT / "data_prep") == []


def test_the_command_scan_sees_every_import_form(tmp_path):
    (tmp_path / "a.py").write_text("from m2e_jax import infer\nimport m2e_jax.demo\n"
                                   "def f():\n    from m2e_jax.evaluate import main\n")
    (tmp_path / "b.py").write_text("from m2e_jax import tryon_pipeline, inference_x\n")
    assert command_imports(tmp_path) == ["a.py:1 m2e_jax.infer", "a.py:2 m2e_jax.demo",
                                         "a.py:4 m2e_jax.evaluate"]
