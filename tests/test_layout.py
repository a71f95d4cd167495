"""The packages import down a fixed order of floors, never up and never in a circle (docs/layout.md):
shards (file formats) < pipeline (tokenizers, the data pipeline) < models (both architectures,
the checkpoint file, Hugging Face) < evaluation < trainer < the command-line scripts. Read from
the source with `ast`, imports inside functions included: a lazy import is still an arrow."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLOORS = ["shards", "pipeline", "models", "evaluation", "trainer"]
SCRIPTS = ["hf_gpt2", "train_gpt2", "sample", "plot", "core_eval", "hellaswag"]


def imported_modules(path):
    """The absolute module names a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def project_arrows():
    """{(importing file, imported top-level name)} for every project file and project import."""
    files = [REPO / f"{name}.py" for name in SCRIPTS]
    files += [path for floor in FLOORS for path in (REPO / floor).rglob("*.py")]
    return {(path.relative_to(REPO).as_posix(), name.split(".")[0])
            for path in files for name in imported_modules(path)
            if name.split(".")[0] in FLOORS + SCRIPTS}


def test_every_package_imports_only_the_floors_below_it_and_no_script():
    up = sorted((file, target) for file, target in project_arrows()
                if (source := file.split("/")[0]) in FLOORS
                and (target in SCRIPTS or FLOORS.index(target) > FLOORS.index(source)))
    assert up == [], f"imports that run back up: {up}"


def test_the_floors_are_all_used_as_declared():
    # the order above is the real one, not a vacuous list: each floor is imported from the next
    arrows = {(file.split("/")[0], target) for file, target in project_arrows()}
    assert {("pipeline", "shards"), ("models", "pipeline"), ("models", "shards"),
            ("evaluation", "models"), ("trainer", "evaluation"), ("trainer", "models")} <= arrows


def test_hub_source_and_local_sources_do_not_import_each_other_both_ways():
    sources = imported_modules(REPO / "pipeline" / "sources.py")
    assert "pipeline.hub_source" not in sources  # hub_source builds on sources, not the reverse
