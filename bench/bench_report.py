"""Benchmark: the end-to-end wall time of `make report` from cold (a fresh clone: no data, no runs), for the default
plan (lab.yaml) and for a CI-sized smoke plan, on this machine. The fresh clone reuses this checkout's .venv (a link),
so the figure is the lab's own time, not the one-off install (about 2.5 minutes, timed by CI); each build starts with
an empty cache of decoded images (VL_LAB_CACHE in a fresh folder), as on a fresh machine. Run it on a quiet
machine: two runs share 2 cores, and anything else heavy slows them.

    python bench/bench_report.py [--jobs 2] [--smoke-only] [--twice] [--keep DIR]

Aims: the default plan under 10 minutes on 2 cores (ratio to that budget printed); the smoke plan under 3 minutes.
Beside each cold time: the time to the first completed run (what the corpus, the cleaning and the consistency scorer
cost before it), and the packing of the runs on the slots (run-seconds / (their span x --jobs); aim: >= 0.95).
`--twice` builds the default plan twice from cold at the same path and checks that every run's metrics.json is
byte-identical, naming any that differs and whether it differs only in measured times (latencies, keys *_ms).
`--keep DIR` copies the last default-plan build's reports/ folder to DIR (the page and every run), to read its figures.
"""

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument('--jobs', type=int, default=2)
ap.add_argument('--smoke-only', action='store_true')
ap.add_argument('--twice', action='store_true')
ap.add_argument('--keep', type=Path, help="copy the last default-plan build's reports/ folder here")
args = ap.parse_args()
SMOKE = dict(
    preset='cpu-tiny',
    experiments=[
        dict(
            name='dual-encoder-rules',
            notebook='nbs/experiments/train_eval.ipynb',
            seeds=[0, 1],
            params=dict(data='clean', eval_data='clean', overrides=['epochs=1', 'max_val=100']),
        ),
        dict(
            name='dual-encoder-raw',
            notebook='nbs/experiments/train_eval.ipynb',
            seeds=[0, 1],
            params=dict(data='raw', eval_data='clean', overrides=['epochs=1', 'max_val=100']),
        ),
    ],
)


# Both builds of --twice use the same clone path: run ids and metrics.json name the corpus by its absolute path, so
# two different folders would share no run id (and no metrics file could be byte-identical) whatever the pipeline does.
WORK = Path(tempfile.mkdtemp(prefix='bench_report-'))


def untimed(x):
    "A metrics tree without its measured times (keys ending in _ms): what must not change between two builds."
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if not k.endswith('_ms')}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def packing(runs: Path, started: float) -> str:
    """The time from the command's start to its first completed run, and how full the run slots were: the runs'
    execution seconds over (the span from the first run's start to the last one's end) x --jobs."""
    spans = []
    for f in runs.glob('*/executions.jsonl'):
        events = [json.loads(line) for line in f.read_text().splitlines()]
        starts, ends = (
            [e['time'] for e in events if e['event'] == 'start'],
            [e['time'] for e in events if e['event'] == 'end'],
        )
        spans += list(zip(starts, ends))
    if not spans:
        return 'no run executed'
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    return (
        f'first run started after {first - started:.0f} s, '
        f'completed after {min(e for _, e in spans) - started:.0f} s; '
        f'{len(spans)} runs, {busy:.0f} run-seconds in {last - first:.0f} s on {args.jobs} slots: packing '
        f'{busy / ((last - first) * args.jobs):.3f}'
    )


def cold(plan_name, plan=None, budget_min=None) -> dict:
    "Build the plan in a fresh clone (always at the same path); returns {run id: sha256 of its metrics.json}."
    clone = WORK / 'lab'
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True)
    os.symlink(ROOT / '.venv', clone / '.venv')
    if plan:
        (clone / 'smoke.yaml').write_text(yaml.safe_dump(plan))
    cache = WORK / 'cache'  # cold: no decoded images kept from before either (vl_lab.dataset.decoded_cache_dir)
    t, started = time.perf_counter(), time.time()
    r = subprocess.run(
        [str(clone / '.venv' / 'bin' / 'vl-lab'), 'report', '--plan', plan_name, '--jobs', str(args.jobs)],
        cwd=clone,
        capture_output=True,
        text=True,
        env=os.environ | {'VL_LAB_CACHE': str(cache)},
    )
    el = time.perf_counter() - t
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:]
    ratio = f', {el / 60 / budget_min:.2f}x the {budget_min}-minute budget' if budget_min else ''
    print(
        f'cold report, {plan_name} (--jobs {args.jobs}): {el:.0f} s = {el / 60:.1f} min{ratio}, exit {r.returncode}; '
        f'{tail}',
        flush=True,
    )
    print(f'  {packing(clone / "reports" / "runs", started)}', flush=True)
    runs = sorted((clone / 'reports' / 'runs').glob('*/metrics.json'))
    out = {
        p.parent.name: (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            untimed(json.loads(p.read_text())),
            json.loads((p.parent / 'run.json').read_text())['name'],
        )
        for p in runs
    }
    if args.keep and not plan:
        subprocess.run(['rm', '-rf', str(args.keep)], check=True)
        subprocess.run(['cp', '-r', str(clone / 'reports'), str(args.keep)], check=True)
    subprocess.run(['rm', '-rf', str(clone), str(cache)], check=True)
    return out


cold('smoke.yaml', SMOKE, budget_min=3)
if not args.smoke_only:
    first = cold('lab.yaml', budget_min=10)
    if args.twice:
        second = cold('lab.yaml', budget_min=10)
        same = [k for k, v in second.items() if k in first and first[k][0] == v[0]]
        print(
            f'two cold builds: {len(same)} of {len(second)} metrics.json files byte-identical '
            f'(run ids in common: {len(first.keys() & second.keys())})'
        )
        for k in sorted(second.keys() - set(same)):
            only_times = k in first and first[k][1] == second[k][1]
            print(
                f'  differs: {second[k][2]} ({k}): '
                f'{"only in measured times (*_ms)" if only_times else "NOT only in times"}'
            )
WORK.rmdir()
