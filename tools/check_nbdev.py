"""Gates of `make test` that keep notebooks and package honest; each failure says what to run.

1. nbdev_export on the notebooks, formatted by `ruff format`, gives exactly vl_lab/ (no hand edits, nothing stale).
2. nbdev_clean leaves the notebooks unchanged, and no notebook has outputs.
3. Every module in vl_lab/ has its notebook.
The checks run on a scratch copy, so the working tree is never touched.
"""

import filecmp
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IGNORE = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints', '*.pyc')


def tree(path):
    return {
        p.relative_to(path).as_posix()
        for p in path.rglob('*')
        if p.is_file() and '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts
    }


def diff(a, b):
    ta, tb = tree(a), tree(b)
    out = [f'only in the working tree: {f}' for f in sorted(ta - tb)] + [
        f'missing from the working tree: {f}' for f in sorted(tb - ta)
    ]
    out += [f'differs: {f}' for f in sorted(ta & tb) if not filecmp.cmp(a / f, b / f, shallow=False)]
    return out


def main():
    failures = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name in ('nbs', 'vl_lab'):
            shutil.copytree(ROOT / name, d / name, ignore=IGNORE)
        for name in ('settings.ini', 'setup.py', 'pyproject.toml'):
            if (ROOT / name).exists():
                shutil.copy(ROOT / name, d / name)
        shutil.rmtree(d / 'vl_lab')
        (d / 'vl_lab').mkdir()
        # `make export`: the modules are nbdev's export, formatted by ruff (its layout of `__all__` and of the blank
        # lines between cells), then the notebooks cleaned
        for cmd in (['nbdev_export'], ['ruff', 'format', '-q', 'vl_lab'], ['nbdev_clean']):
            r = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=d, capture_output=True, text=True)
            if r.returncode:
                failures.append(f'{" ".join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}')
        if d.joinpath('vl_lab', '__init__.py').exists() is False and (ROOT / 'vl_lab' / '__init__.py').exists():
            shutil.copy(ROOT / 'vl_lab' / '__init__.py', d / 'vl_lab' / '__init__.py')
        if dv := diff(ROOT / 'vl_lab', d / 'vl_lab'):
            failures.append(
                'vl_lab/ is not what nbdev_export makes of the notebooks (edit the notebooks, then `make export`):\n  '
                + '\n  '.join(dv)
            )
        if dn := diff(ROOT / 'nbs', d / 'nbs'):
            failures.append(
                'notebooks are not clean (run `make export`, which runs nbdev_clean):\n  ' + '\n  '.join(dn)
            )
    exported = set()
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts:
            continue
        cells = json.loads(nb.read_text())['cells']
        if any(c.get('outputs') or c.get('execution_count') for c in cells if c['cell_type'] == 'code'):
            failures.append(f'{nb.relative_to(ROOT)} has outputs: clear them before committing')
        for c in cells:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m:
                exported.add(m.group(1))
    for py in sorted((ROOT / 'vl_lab').glob('*.py')):
        if py.stem not in ('__init__', '_modidx') and py.stem not in exported:
            failures.append(
                f'vl_lab/{py.name} has no notebook (a notebook was deleted or renamed): '
                'delete the module or restore its notebook'
            )
    for f in failures:
        print(f'FAIL: {f}', file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f'nbdev gates: {len(exported)} modules in sync with their notebooks; notebooks clean')


if __name__ == '__main__':
    main()
