"""`vl-lab report` with a plan: runs executed by papermill, cached by content hash, failures recorded, the lab note."""

import json
import re

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_cli
from vl_lab.synthetic import synth, synth_config

TINY = ['epochs=2']  # on top of the cpu-micro preset
ARM = TINY + [
    'model.conv_channels=16,32,64,64',
    'model.text_width=64',
]  # teachers: big enough that INT8 files are smaller
STUDENT = TINY + [
    'model.conv_channels=4,8,8,16',
    'model.text_width=16',
    'model.embed_dim=16',
    'loss_weights=contrastive=1,distill=1',
]
NAMES = (
    ['dual-encoder-clean'] * 2
    + ['dual-encoder-raw'] * 2
    + ['dual-encoder-consistent', 'fusion', 'broken', 'needs-broken']
    + ['student-distilled'] * 2
    + ['student-alone'] * 2
    + ['deployment']
)


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp('lab')
    synth(d / 'shapes', synth_config(n_images=160, seed=2), progress=False)
    params = nbformat.v4.new_code_cell("seed = 0\ndata = ''\nteacher = ''", metadata={'tags': ['parameters']})
    bad = nbformat.v4.new_notebook(
        cells=[params, nbformat.v4.new_code_cell("raise ValueError('this notebook fails on purpose')")]
    )
    nbformat.write(bad, d / 'failing.ipynb')
    nb = str(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb')
    plan = dict(
        corpus=str(d / 'shapes'),
        preset='cpu-micro',
        experiments=[
            dict(
                name='dual-encoder-clean',
                notebook=nb,
                seeds=[0, 1],
                params=dict(data='clean', eval_data='consistent', overrides=ARM),
            ),
            dict(
                name='dual-encoder-raw',
                notebook=nb,
                seeds=[0, 1],
                params=dict(data='raw', eval_data='consistent', overrides=ARM),
            ),
            dict(
                name='dual-encoder-consistent',
                notebook=nb,
                seeds=[0],
                params=dict(data='consistent', eval_data='consistent', overrides=ARM),
            ),
            dict(
                name='fusion',
                notebook=nb,
                seeds=[0],
                params=dict(data='clean', overrides=TINY + ['model.tasks=contrastive,itm,caption,vqa']),
            ),
            dict(name='broken', notebook=str(d / 'failing.ipynb'), params=dict(data='raw')),
            dict(name='needs-broken', notebook=str(d / 'failing.ipynb'), params=dict(data='raw', teacher='run:broken')),
            dict(
                name='student-distilled',
                notebook=nb,
                seeds=[0, 1],
                params=dict(data='clean', teacher='run:dual-encoder-clean', overrides=STUDENT),
            ),
            dict(name='student-alone', notebook=nb, seeds=[0, 1], params=dict(data='clean', overrides=STUDENT)),
            dict(
                name='deployment',
                notebook=str(ROOT / 'nbs' / 'experiments' / 'deploy.ipynb'),
                params=dict(
                    runs='runs:dual-encoder-clean',
                    distilled='runs:student-distilled',
                    alone='runs:student-alone',
                    n_latency=5,
                ),
            ),
        ],
    )
    (d / 'plan.yaml').write_text(yaml.safe_dump(plan))
    first = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'reports', '--jobs', 2, cwd=d)
    return d, first


def test_plan_runs_and_failure_is_reported(lab):
    d, r = lab
    assert r.returncode == 1 and "2 run(s) failed: broken seed 0" in r.stderr and 'Traceback' not in r.stderr


def test_the_page_describes_the_plans_corpus_and_makes_no_other(lab):
    "A plan naming `corpus: DIR` and no --data: the data card is DIR's, and no default corpus appears in the cwd."
    d, _ = lab
    html = (d / 'reports' / 'index.html').read_text()
    assert f"data: {d / 'shapes'}" in html
    assert not (d / 'data').exists()
    index = json.loads((d / 'reports' / 'runs' / 'index.json').read_text())
    assert [x['name'] for x in index['runs']] == NAMES
    assert [x['status'] for x in index['runs']] == ['done'] * 6 + ['failed'] * 2 + ['done'] * 5
    assert 'this notebook fails on purpose' in index['runs'][6]['cause']
    broken = index['runs'][6]['run_id']
    assert index['runs'][7]['cause'] == f'needs the run broken seed 0 ({broken}), which failed'  # never executed
    for x in index['runs'][:6]:
        run = d / 'reports' / 'runs' / x['run_id']
        assert all(
            (run / f).exists()
            for f in ('executed.ipynb', 'run.html', 'params.yaml', 'metrics.json', 'history.csv', 'provenance.json')
        )
    html = (d / 'reports' / 'index.html').read_text()
    for title in (
        'Data card',
        'Data cleaning',
        'Model training',
        'Evaluation metrics',
        'Conclusions',
        'Evidence: what the models do',
        'Next steps',
        'Runs',
    ):
        assert f'<h2>{title}</h2>' in html, title
    assert 'this notebook fails on purpose' in html and 'n=2' in html and 'chance' in html
    # the cleaning ablation: three arms found from the plan, each difference with its standard error
    assert 'Data cleaning, test t2i_R@1 of the same model' in html
    for pair in ('rules against raw', 'rules + consistency against raw', 'rules + consistency against rules'):
        assert pair + ': ' in html and ' (SE); ' in html, pair
    # the cleaning card shows the consistency rule, scored by the lab's own cross-fitted dual encoder
    assert 'Image-text consistency:' in html and 'cross-fitted' in html
    assert 'question-only language prior' in html and 'Zero-shot, the shape of the lone object' in html


def test_distilled_students_and_the_deployment_table(lab):
    d, _ = lab
    runs = {
        (x['name'], x['seed']): d / 'reports' / 'runs' / x['run_id']
        for x in json.loads((d / 'reports' / 'runs' / 'index.json').read_text())['runs']
    }
    for seed in (0, 1):  # each student learned from the teacher of its seed, through the loss term 'distill'
        student = yaml.safe_load((runs['student-distilled', seed] / 'params.yaml').read_text())
        assert student['teacher'] == str(runs['dual-encoder-clean', seed].resolve())
        h = pd.read_csv(runs['student-distilled', seed] / 'history.csv')
        assert (
            h[h.kind == 'step'].distill.notna().all()
            and pd.read_csv(runs['student-alone', seed] / 'history.csv').distill.isna().all()
        )
    dep = json.loads((runs['deployment', 0] / 'metrics.json').read_text())['deployment']
    variants = [(r['variant'], r['seed']) for r in dep['rows']]
    for seed in (0, 1):
        for v in (
            'torch fp32',
            'onnx fp32',
            'onnx int8',
            'onnx int8 static',
            'torch pruned 30%',
            'torch pruned 60%',
            'distilled student',
            'student alone',
        ):
            assert (v, seed) in variants, (v, seed)
    fp32 = {r['seed']: r for r in dep['rows'] if r['variant'] == 'torch fp32'}
    for r in dep['rows']:
        if r['variant'] == 'onnx fp32':
            assert abs(r['t2i_R@1'] - fp32[r['seed']]['t2i_R@1']) < 1e-9
        if r['variant'] in ('onnx int8', 'onnx int8 static'):
            assert r['size_mb'] < fp32[r['seed']]['size_mb'] / 2
        if r['variant'].startswith('student') or r['variant'].startswith('distilled'):
            assert r['params'] < fp32[r['seed']]['params'] / 2
    # the deployment measured the students' test R@1 as their own evaluation did
    ev = json.loads((runs['student-alone', 0] / 'metrics.json').read_text())['eval']['retrieval']['t2i_R@1']
    assert (
        abs(next(r['t2i_R@1'] for r in dep['rows'] if r['variant'] == 'student alone' and r['seed'] == 0) - ev) < 1e-6
    )
    html = (d / 'reports' / 'index.html').read_text()
    assert '<h2>Deployment</h2>' in html and 'Findings (computed from the table)' in html
    assert (
        'INT8 (dynamic, ONNX Runtime): the files are' in html
        and 'INT8 static (image encoder static' in html
        and 'Distillation: the student has' in html
    )


def test_progress_as_runs_finish_and_the_plans_wall_time_on_the_page(lab):
    d, r = lab
    todo = int(re.search(r'plan: \d+ runs, (\d+) to execute', r.stdout).group(1))
    lines = re.findall(r'^  plan: (\d+) done(?: \(\d+ failed\))?, (\d+) running, (\d+) left(.*)$', r.stdout, re.M)
    assert [int(done) for done, *_ in lines] == list(range(1, todo + 1))  # a line as each run finishes
    assert all(int(done) + int(running) + int(left) == todo for done, running, left, _ in lines)
    estimates = [rest for *_, rest in lines if rest]
    assert any(re.fullmatch(r'; about \d+ (s|min) left \(\d+ runs? measured, 2 at a time\)', e) for e in estimates), (
        lines
    )
    index = json.loads((d / 'reports' / 'runs' / 'index.json').read_text())
    executed = [x for x in index['runs'] if x['status'] in ('done', 'failed') and x['seconds']]
    assert index['executed_s'] == pytest.approx(sum(x['seconds'] for x in executed), abs=0.2)
    assert 0 < index['wall_s'] and "runs executed in" in r.stdout
    html = (d / 'reports' / 'index.html').read_text()
    assert re.search(r"wall time \(s\): planning and executing this report&#39;s \d+ runs</td><td>[\d.]+<", html)


def test_second_report_executes_nothing(lab):
    d, _ = lab
    r = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'reports', cwd=d)
    assert 'plan: 13 runs, 2 to execute, 11 complete already' in r.stdout  # only the failed runs are tried again


def test_changing_a_parameter_reruns_only_what_it_touches(lab):
    d, _ = lab
    plan = yaml.safe_load((d / 'plan.yaml').read_text())
    plan['experiments'][3]['params']['overrides'] = TINY + ['model.tasks=contrastive,itm,caption,vqa', 'lr=2e-4']
    plan['experiments'] = plan['experiments'][:4]
    (d / 'plan2.yaml').write_text(yaml.safe_dump(plan))
    r = run_cli('report', '--plan', d / 'plan2.yaml', '--out', d / 'reports', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'plan: 6 runs, 1 to execute, 5 complete already' in r.stdout


def test_two_cold_builds_give_identical_metrics(lab):
    d, _ = lab
    r = run_cli(
        'report', '--plan', d / 'plan.yaml', '--out', d / 'reports-again', '--only', 'dual-encoder-clean', cwd=d
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [x['run_id'] for x in json.loads((d / 'reports-again' / 'runs' / 'index.json').read_text())['runs']]
    assert len(ids) == 2
    for rid in ids:
        assert (d / 'reports' / 'runs' / rid / 'metrics.json').read_bytes() == (
            d / 'reports-again' / 'runs' / rid / 'metrics.json'
        ).read_bytes()


def test_dead_kernel_and_timeout_are_failed_runs_with_their_cause(lab, tmp_path):
    from vl_lab.runner import run_plan

    d, _ = lab
    cells = {'dies': "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 'hangs': "import time; time.sleep(600)"}
    exps = []
    for name, code in cells.items():
        params = nbformat.v4.new_code_cell("seed = 0\ndata = ''", metadata={'tags': ['parameters']})
        nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(code)])
        nbformat.write(nb, tmp_path / f'{name}.ipynb')
        exps.append(dict(name=name, notebook=str(tmp_path / f'{name}.ipynb'), params=dict(data='raw')))
    (tmp_path / 'plan.yaml').write_text(yaml.safe_dump(dict(corpus=str(d / 'shapes'), experiments=exps)))
    t = __import__('time').time()
    recs = run_plan(tmp_path / 'plan.yaml', out=tmp_path / 'reports', timeout=20, jobs=2, progress=False)
    assert [r['status'] for r in recs] == ['failed', 'failed']
    assert recs[0]['cause'] == 'the kernel died (out of memory?)', recs[0]
    assert recs[1]['cause'] == 'timed out after 20 s', recs[1]
    assert __import__('time').time() - t < 120  # the hung kernel was killed, not waited for


def test_a_copy_in_another_folder_finds_every_complete_run(lab, tmp_path, monkeypatch):
    "Run ids do not depend on where the checkout is: a copy of the folder, with its reports/, has nothing to execute."
    import shutil

    from vl_lab.runner import is_complete, plan_runs, read_plan

    d, _ = lab
    here = tmp_path / 'elsewhere' / 'lab'
    shutil.copytree(d, here, ignore=shutil.ignore_patterns('reports-again', 'plan2.yaml'))
    (here / 'plan.yaml').write_text((d / 'plan.yaml').read_text().replace(str(d), str(here)))

    def planned(folder):
        monkeypatch.chdir(folder)
        corpora = {
            k: folder / name
            for k, name in (('raw', 'shapes'), ('clean', 'shapes-clean'), ('consistent', 'shapes-consistent'))
        }
        return plan_runs(read_plan(folder / 'plan.yaml'), corpora, folder / 'reports')

    there, copy = planned(d), planned(here)
    assert [r.run_id for r in copy] == [r.run_id for r in there]
    done = [r for r in there if is_complete(r.run_dir)]
    assert len(done) == 11 and all(is_complete(r.run_dir) for r in copy if r.run_id in {x.run_id for x in done})


def test_a_misspelled_override_is_one_line_before_any_run(lab, tmp_path, monkeypatch):
    "The plan is resolved before any run starts; the CLI prints a VLLabError as this one line (tests/test_cli.py)."
    from vl_lab.core import VLLabError
    from vl_lab.runner import run_plan

    d, _ = lab
    monkeypatch.chdir(d)
    plan = yaml.safe_load((d / 'plan.yaml').read_text())
    plan['experiments'][1]['params']['overrides'] = ARM + ['epoch=3']
    (tmp_path / 'typo.yaml').write_text(yaml.safe_dump(plan))
    with pytest.raises(VLLabError) as err:
        run_plan(tmp_path / 'typo.yaml', out=tmp_path / 'reports', progress=False)
    line = str(err.value)
    assert '\n' not in line and line.startswith("experiment dual-encoder-raw: unknown config key 'epoch'"), line
    assert not (tmp_path / 'reports' / 'runs').exists()  # nothing ran


def test_two_spellings_of_one_config_are_one_run(lab, monkeypatch):
    from vl_lab.runner import plan_runs, read_plan

    d, _ = lab
    monkeypatch.chdir(d)
    plan = read_plan(d / 'plan.yaml')
    corpora = {'raw': d / 'shapes', 'clean': d / 'shapes-clean', 'consistent': d / 'shapes-consistent'}
    ids = [r.run_id for r in plan_runs(plan, corpora, d / 'reports')]
    plan['experiments'][0]['params']['overrides'] = ['epochs=02'] + ARM[1:]  # TINY is ['epochs=2']
    assert [r.run_id for r in plan_runs(plan, corpora, d / 'reports')] == ids
