"""The rules that keep the layers apart (docs/ARCHITECTURE.md), checked on the sources and on a fresh import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (top level or inside functions)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_model_never_imports_the_pipeline_or_the_workflows():
    files = sorted((REPO / "model").rglob("*.py"))
    assert len(files) >= 10
    offending = {str(path.relative_to(REPO)): sorted(m for m in imported_modules(path)
                                                     if m.split(".")[0] in ("pipeline", "workflows"))
                 for path in files}
    assert {path: modules for path, modules in offending.items() if modules} == {}


def test_task_modules_load_without_torch():
    """Luigi imports every task module to build the graph; torch (seconds, GBs) is imported inside `run()` only."""
    script = ("import sys\n"
              "import pipeline.tasks, pipeline.text_tasks, pipeline.image_tasks, pipeline.embedding_tasks\n"
              "import workflows.experiments, workflows.paper\n"
              "print(sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
