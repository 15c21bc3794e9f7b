"""Benchmark: the end-to-end wall time of `make report` from cold (a fresh clone: no data, no runs), for the default
plan (lab.yaml) and for a CI-sized smoke plan, on this machine. The fresh clone reuses this checkout's .venv (a link),
so the figure is the lab's own time, not the one-off install (about 2.5 minutes, timed by CI).

    python bench/bench_report.py [--jobs 2] [--smoke-only]
Aims: the default plan under 10 minutes on 2 cores; the smoke plan under 3 minutes.
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser(); ap.add_argument('--jobs', type=int, default=2); ap.add_argument('--smoke-only', action='store_true')
args = ap.parse_args()
SMOKE = dict(preset='cpu-tiny', experiments=[
    dict(name='dual-encoder-clean', notebook='nbs/experiments/train_eval.ipynb', seeds=[0, 1], params=dict(data='clean', eval_data='clean', overrides=['epochs=1', 'max_val=100'])),
    dict(name='dual-encoder-raw', notebook='nbs/experiments/train_eval.ipynb', seeds=[0, 1], params=dict(data='raw', eval_data='clean', overrides=['epochs=1', 'max_val=100']))])


def cold(plan_name, plan=None):
    with tempfile.TemporaryDirectory() as d:
        clone = Path(d) / 'lab'
        subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True)
        os.symlink(ROOT / '.venv', clone / '.venv')
        if plan: (clone / 'smoke.yaml').write_text(yaml.safe_dump(plan))
        t = time.perf_counter()
        r = subprocess.run([str(clone / '.venv' / 'bin' / 'vl-lab'), 'report', '--plan', plan_name, '--jobs', str(args.jobs)],
                           cwd=clone, capture_output=True, text=True)
        el = time.perf_counter() - t
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''
        print(f'cold report, {plan_name} (--jobs {args.jobs}): {el:.0f} s = {el / 60:.1f} min, exit {r.returncode}; {tail}', flush=True)


cold('smoke.yaml', SMOKE)
if not args.smoke_only: cold('lab.yaml')
