"""Benchmark: the end-to-end wall time of `make report` from cold (a fresh clone: no data, no runs), for the default
plan (lab.yaml) and for a CI-sized smoke plan, on this machine. The fresh clone reuses this checkout's .venv (a link),
so the figure is the lab's own time, not the one-off install (about 2.5 minutes, timed by CI). Run it on a quiet
machine: two runs share 2 cores, and anything else heavy slows them.

    python bench/bench_report.py [--jobs 2] [--smoke-only] [--twice]

Aims: the default plan under 10 minutes on 2 cores (ratio to that budget printed); the smoke plan under 3 minutes.
`--twice` builds the default plan twice from cold and checks that every run's metrics.json is byte-identical.
"""
import argparse, hashlib, os, subprocess, tempfile, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument('--jobs', type=int, default=2)
ap.add_argument('--smoke-only', action='store_true')
ap.add_argument('--twice', action='store_true')
args = ap.parse_args()
SMOKE = dict(preset='cpu-tiny', experiments=[
    dict(name='dual-encoder-rules', notebook='nbs/experiments/train_eval.ipynb', seeds=[0, 1],
         params=dict(data='clean', eval_data='clean', overrides=['epochs=1', 'max_val=100'])),
    dict(name='dual-encoder-raw', notebook='nbs/experiments/train_eval.ipynb', seeds=[0, 1],
         params=dict(data='raw', eval_data='clean', overrides=['epochs=1', 'max_val=100']))])


# Both builds of --twice use the same clone path: run ids and metrics.json name the corpus by its absolute path, so
# two different folders would share no run id (and no metrics file could be byte-identical) whatever the pipeline does.
WORK = Path(tempfile.mkdtemp(prefix='bench_report-'))


def cold(plan_name, plan=None, budget_min=None) -> dict:
    "Build the plan in a fresh clone (always at the same path); returns {run id: sha256 of its metrics.json}."
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        clone = WORK / 'lab'
        subprocess.run(['rm', '-rf', str(clone)], check=True)
        subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True)
        os.symlink(ROOT / '.venv', clone / '.venv')
        if plan:
            (clone / 'smoke.yaml').write_text(yaml.safe_dump(plan))
        t = time.perf_counter()
        r = subprocess.run([str(clone / '.venv' / 'bin' / 'vl-lab'), 'report', '--plan', plan_name, '--jobs', str(args.jobs)],
                           cwd=clone, capture_output=True, text=True)
        el = time.perf_counter() - t
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:]
        ratio = f', {el / 60 / budget_min:.2f}x the {budget_min}-minute budget' if budget_min else ''
        print(f'cold report, {plan_name} (--jobs {args.jobs}): {el:.0f} s = {el / 60:.1f} min{ratio}, exit {r.returncode}; '
              f'{tail}', flush=True)
        runs = sorted((clone / 'reports' / 'runs').glob('*/metrics.json'))
        out = {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in runs}
        subprocess.run(['rm', '-rf', str(clone)], check=True)
        return out


cold('smoke.yaml', SMOKE, budget_min=3)
if not args.smoke_only:
    first = cold('lab.yaml', budget_min=10)
    if args.twice:
        second = cold('lab.yaml', budget_min=10)
        same = sum(first.get(k) == v for k, v in second.items())
        print(f'two cold builds: {same} of {len(second)} metrics.json files byte-identical '
              f'(run ids in common: {len(first.keys() & second.keys())})')
WORK.rmdir()
