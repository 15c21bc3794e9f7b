import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VL_LAB = str(Path(sys.executable).parent / 'vl-lab')


def run_cli(*args, cwd=None, check=False):
    "Run the installed `vl-lab` console script; returns the CompletedProcess."
    r = subprocess.run([VL_LAB, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'})
    if check and r.returncode: raise AssertionError(f'vl-lab {args} failed ({r.returncode}): {r.stderr[-2000:]}')
    return r


@pytest.fixture(scope='session')
def heavy_corpus(tmp_path_factory):
    "A 1,500-image corpus with the heavy noise preset (enough to measure each noise rate)."
    out = tmp_path_factory.mktemp('heavy') / 'corpus'
    run_cli('synth', out, '--n-images', 1500, '--seed', 11, '--noise', 'heavy', '--quiet', check=True)
    return out
