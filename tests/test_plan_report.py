"""`vl-lab report` with a plan: runs executed by papermill, cached by content hash, failures recorded, the lab note."""
import json

import nbformat
import pytest
import yaml

from conftest import ROOT, run_cli
from vl_lab.synthetic import synth, synth_config

TINY = ['epochs=2', 'model.conv_channels=16,32,64,64', 'model.text_width=64', 'model.text_layers=2', 'model.embed_dim=32',
        'model.fusion_width=64', 'model.fusion_layers=1', 'model.decoder_layers=1']


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp('lab')
    synth(d / 'shapes', synth_config(n_images=160, seed=2), progress=False)
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('seed = 0', metadata={'tags': ['parameters']}),
                                          nbformat.v4.new_code_cell("raise ValueError('this notebook fails on purpose')")])
    nbformat.write(bad, d / 'failing.ipynb')
    nb = str(ROOT / 'nbs' / 'experiments' / 'train_eval.ipynb')
    plan = dict(corpus=str(d / 'shapes'), experiments=[
        dict(name='dual-encoder-clean', notebook=nb, seeds=[0, 1], params=dict(data='clean', eval_data='clean', overrides=TINY)),
        dict(name='dual-encoder-raw', notebook=nb, seeds=[0, 1], params=dict(data='raw', eval_data='clean', overrides=TINY)),
        dict(name='fusion', notebook=nb, seeds=[0], params=dict(data='clean', overrides=TINY + ['model.tasks=contrastive,itm'])),
        dict(name='broken', notebook=str(d / 'failing.ipynb'), params=dict(data='raw'))])
    (d / 'plan.yaml').write_text(yaml.safe_dump(plan))
    first = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'reports', '--jobs', 2, cwd=d)
    return d, first


def test_plan_runs_and_failure_is_reported(lab):
    d, r = lab
    assert r.returncode == 1 and "1 run(s) failed: broken seed 0" in r.stderr and 'Traceback' not in r.stderr
    index = json.loads((d / 'reports' / 'runs' / 'index.json').read_text())
    assert [x['status'] for x in index['runs']] == ['done'] * 5 + ['failed']
    assert 'this notebook fails on purpose' in index['runs'][-1]['cause']
    for x in index['runs'][:5]:
        run = d / 'reports' / 'runs' / x['run_id']
        assert all((run / f).exists() for f in ('executed.ipynb', 'run.html', 'params.yaml', 'metrics.json', 'history.csv', 'provenance.json'))
    html = (d / 'reports' / 'index.html').read_text()
    for title in ('Data card', 'Data cleaning', 'Model training', 'Evaluation metrics', 'Conclusions', 'Next steps', 'Runs'):
        assert f'<h2>{title}</h2>' in html, title
    assert 'Data cleaning: test t2i_R@1' in html and 'this notebook fails on purpose' in html
    assert 'n=2' in html and 'chance' in html


def test_second_report_executes_nothing(lab):
    d, _ = lab
    r = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'reports', cwd=d)
    assert 'plan: 6 runs, 1 to execute, 5 complete already' in r.stdout  # only the failing run is tried again


def test_changing_a_parameter_reruns_only_what_it_touches(lab):
    d, _ = lab
    plan = yaml.safe_load((d / 'plan.yaml').read_text())
    plan['experiments'][2]['params']['overrides'] = TINY + ['model.tasks=contrastive,itm', 'lr=2e-4']
    plan['experiments'] = plan['experiments'][:3]
    (d / 'plan2.yaml').write_text(yaml.safe_dump(plan))
    r = run_cli('report', '--plan', d / 'plan2.yaml', '--out', d / 'reports', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'plan: 5 runs, 1 to execute, 4 complete already' in r.stdout


def test_two_cold_builds_give_identical_metrics(lab):
    d, _ = lab
    r = run_cli('report', '--plan', d / 'plan.yaml', '--out', d / 'reports-again', '--only', 'dual-encoder-clean', cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [x['run_id'] for x in json.loads((d / 'reports-again' / 'runs' / 'index.json').read_text())['runs']]
    assert len(ids) == 2
    for rid in ids:
        assert (d / 'reports' / 'runs' / rid / 'metrics.json').read_bytes() == (d / 'reports-again' / 'runs' / rid / 'metrics.json').read_bytes()


def test_dead_kernel_and_timeout_are_failed_runs_with_their_cause(lab, tmp_path):
    from vl_lab.runner import run_plan
    d, _ = lab
    cells = {'dies': "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 'hangs': "import time; time.sleep(600)"}
    exps = []
    for name, code in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('seed = 0', metadata={'tags': ['parameters']}), nbformat.v4.new_code_cell(code)])
        nbformat.write(nb, tmp_path / f'{name}.ipynb')
        exps.append(dict(name=name, notebook=str(tmp_path / f'{name}.ipynb'), params=dict(data='raw')))
    (tmp_path / 'plan.yaml').write_text(yaml.safe_dump(dict(corpus=str(d / 'shapes'), experiments=exps)))
    t = __import__('time').time()
    recs = run_plan(tmp_path / 'plan.yaml', out=tmp_path / 'reports', timeout=40, jobs=2, progress=False)
    assert [r['status'] for r in recs] == ['failed', 'failed']
    assert recs[0]['cause'] == 'the kernel died (out of memory?)', recs[0]
    assert recs[1]['cause'] == 'timed out after 40 s', recs[1]
    assert __import__('time').time() - t < 120  # the hung kernel was killed, not waited for
