"""The rules that keep the layers apart (docs/ARCHITECTURE.md), checked on the sources and on a fresh import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# the modules of model/ that apply a trained model to new raw posts, and so run the pipeline's featurisation
FEATURISING = {"cli.py", "provenance.py", "tagging.py"}


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules the file's `import` and `from ... import` statements name: anywhere in it (inside functions
    too), or only at its top level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def outer_imports(path: Path, top_level_only: bool = False) -> list[str]:
    return sorted(m for m in imported_modules(path, top_level_only) if m.split(".")[0] in ("pipeline", "workflows"))


def test_model_imports_the_pipeline_only_to_featurise_new_posts():
    """The model, its data, training and evaluation never import pipeline/ or workflows/; tagging new posts
    runs the pipeline's featurisation, and does so in its own modules, importing it inside functions only."""
    files = sorted((REPO / "model").rglob("*.py"))
    assert len(files) >= 10
    assert {path.name: outer_imports(path, top_level_only=True) for path in files
            if outer_imports(path, top_level_only=True)} == {}
    assert {path.name for path in files if outer_imports(path)} <= FEATURISING
    assert all(not outer_imports(REPO / "model" / name) for name in ("model.py", "data.py", "train.py", "metrics.py"))


def test_durable_writes_import_no_layer_nor_framework():
    """Every layer writes through durable/, so it imports none of them, nor luigi, nor torch."""
    files = sorted((REPO / "durable").glob("*.py"))
    assert len(files) >= 3
    heavy = ("pipeline", "model", "workflows", "luigi", "torch")
    assert {path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] in heavy) for path in files} == \
        {path.name: [] for path in files}


def test_task_modules_load_without_torch():
    """Luigi imports every task module to build the graph; torch (seconds, GBs) is imported inside `run()` only."""
    script = ("import sys\n"
              "import pipeline.tasks, pipeline.text_tasks, pipeline.image_tasks, pipeline.embedding_tasks\n"
              "import workflows.experiments, workflows.paper\n"
              "print(sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
