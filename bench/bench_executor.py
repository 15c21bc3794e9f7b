"""Benchmark: the same smoke plan executed by the local executor and by Ray (a local Ray instance started by the run),
on this machine; prints the wall time of each and the overhead ratio ray / local, and checks that both give the same
metrics.json files. Run it on a quiet machine (2 runs share 2 cores). The corpora are prepared once, beforehand.

    python bench/bench_executor.py [--jobs 2] [--epochs 12]

Aim: under 1.2x for runs of a minute or more (`--epochs 12` makes each cpu-tiny run about a minute here).
"""

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from vl_lab.runner import plan_corpora, read_plan, run_plan

ap = argparse.ArgumentParser()
ap.add_argument('--jobs', type=int, default=2)
ap.add_argument('--epochs', type=int, default=12)
args = ap.parse_args()
ROOT = Path(__file__).resolve().parent.parent
NB = str(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb')
overrides = [f'epochs={args.epochs}', 'max_val=100']
SMOKE = dict(
    corpus=str(ROOT / 'data' / 'shapes'),
    preset='cpu-tiny',
    experiments=[
        dict(name='rules', notebook=NB, seeds=[0, 1], params=dict(data='clean', overrides=overrides)),
        dict(name='raw', notebook=NB, seeds=[0, 1], params=dict(data='raw', eval_data='clean', overrides=overrides)),
    ],
)
work = Path(tempfile.mkdtemp(prefix='bench_executor-'))
(work / 'smoke.yaml').write_text(yaml.safe_dump(SMOKE))
corpora = plan_corpora(read_plan(work / 'smoke.yaml'))  # made once, untimed
times, outs = {}, {}
for name in ('local', 'ray'):
    outs[name] = work / name
    t = time.perf_counter()
    recs = run_plan(work / 'smoke.yaml', out=outs[name], jobs=args.jobs, corpora=corpora, executor=name, progress=False)
    times[name] = time.perf_counter() - t
    runs = ', '.join(f"{r['seconds']:.0f}" for r in recs)
    print(f'{name}: {times[name]:.1f} s for {len(recs)} runs ({runs} s each), statuses {[r["status"] for r in recs]}')
same = all(
    (outs['local'] / 'runs' / p.parent.name / 'metrics.json').read_bytes() == p.read_bytes()
    for p in (outs['ray'] / 'runs').glob('*/metrics.json')
)
print(f'ray / local = {times["ray"] / times["local"]:.2f}x (aim: under 1.2x); metrics.json identical: {same}')
