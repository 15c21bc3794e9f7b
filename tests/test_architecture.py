"The rules of ARCHITECTURE.md, read from the code: the import graph of vl_lab, and tests that can fail."

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import architecture  # noqa: E402

from vl_lab.runner import PRESENTATION  # noqa: E402


def test_no_import_cycle():
    assert architecture.cycle(architecture.graph()) == []


def test_cycle_finder_finds_one():
    assert architecture.cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']


def test_evaluation_deployment_and_service_load_runs_without_the_training_loop():
    g = architecture.graph()
    assert {m for m in ('evaluate', 'deploy', 'serve', 'run') if 'train' in g[m]} == set()
    assert {'run'} <= g['evaluate'] & g['deploy'] & g['serve']


def test_only_the_cli_imports_the_report():
    g = architecture.graph()
    assert {m for m, deps in g.items() if 'report' in deps} == {'cli'}


def test_images_are_read_through_one_module():
    g = architecture.graph()
    assert all('images' in g[m] for m in ('cleaning', 'clean', 'dataset', 'datacard', 'serve'))
    assert all('cleaning' not in g[m] for m in ('dataset', 'datacard', 'serve'))


def test_no_module_a_run_executes_imports_a_presentation_module():
    "A run's id hashes every module but the presentation ones: a run must not depend on those."
    g = architecture.graph()
    leaks = {m: sorted(g[m] & set(PRESENTATION)) for m in g if m not in PRESENTATION and g[m] & set(PRESENTATION)}
    assert leaks == {}


def test_architecture_page_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'architecture.py'), '--check'], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def _asserting_helpers(trees) -> set[str]:
    "Names of functions in the test files that assert or expect an exception themselves."
    return {f.name for t in trees for f in ast.walk(t) if isinstance(f, ast.FunctionDef) and _checks(f, set())}


def _checks(fn, helpers) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, 'id', '')
            if name in ('raises', 'warns', 'fail', 'test_fail', 'test_eq', 'test_close') or name in helpers:
                return True
    return False


def test_every_test_can_fail():
    "Every test function asserts, expects an exception, or calls a helper of the tests that does."
    trees = {p: ast.parse(p.read_text()) for p in sorted((ROOT / 'tests').glob('*.py'))}
    helpers = _asserting_helpers(trees.values())
    silent = [
        f'{p.name}::{f.name}'
        for p, t in trees.items()
        for f in t.body
        if isinstance(f, ast.FunctionDef) and f.name.startswith('test_') and not _checks(f, helpers)
    ]
    assert silent == []


def test_no_line_of_the_package_is_over_120_characters():
    "ruff's E501 lets an overlong line through when its tail is one word (a URL, say): this does not."
    long = [
        f'{p.name}:{k}'
        for p in sorted((ROOT / 'vl_lab').glob('*.py'))
        for k, line in enumerate(p.read_text().splitlines(), 1)
        if len(line) > 120
    ]
    assert long == []
