"""`vl_lab.deploy` on a tiny trained run: ONNX parity at two batch sizes, INT8 size and accuracy, pruning sparsity,
the table."""

import json

import pytest
import torch

from vl_lab.core import VLLabError
from vl_lab.deploy import (
    OrtEncoders,
    calibration_batches,
    deployment_table,
    export_onnx,
    max_abs_diff,
    prune,
    quantize_encoders,
    quantize_int8,
    sample_batch,
    eval_split,
    weight_sparsity,
)
from vl_lab.run import load_run
from vl_lab.synthetic import synth, synth_config
from vl_lab.run import resolve_config
from vl_lab.train import train

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings('ignore')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('deploy')
    synth(d / 'data', synth_config('none', n_images=160, seed=3), progress=False)
    cfg = resolve_config(
        'cpu-small',
        {
            'epochs': 1,
            'model.tasks': 'contrastive',
        },
        data=d / 'data',
    )
    train(cfg, d / 'run', progress=False)
    model, tok, cfg, _ = load_run(d / 'run')
    return dict(dir=d / 'run', model=model, tok=tok, cfg=cfg, ds=eval_split(cfg), onnx=export_onnx(d / 'run'))


def test_onnx_parity_dynamic_batch(run):
    ex = run['onnx']
    assert ex['image'] == run['dir'] / 'export' / 'image.onnx' and ex['text'].is_file()
    assert max(ex['max_abs_diff'].values()) <= 1e-4
    enc = OrtEncoders(ex['image'], ex['text'])
    for n in (1, 5):
        batch = sample_batch(run['ds'], run['tok'], run['cfg'].model.max_len, n)
        assert batch[0].shape[0] == n and enc.encode_image(batch[0])[0].shape[0] == n
        d = max_abs_diff(run['model'], enc, batch)
        assert d['image'] <= 1e-4 and d['text'] <= 1e-4, (n, d)


def test_int8(run):
    ex = run['onnx']
    q = {k: quantize_int8(ex[k]) for k in ('image', 'text')}
    for k in q:
        assert q[k].is_file() and q[k].stat().st_size < ex[k].stat().st_size
    px, ids, mask = sample_batch(run['ds'], run['tok'], run['cfg'].model.max_len, 5)
    e8, m = OrtEncoders(q['image'], q['text']), run['model']
    with torch.no_grad():
        assert (e8.encode_image(px)[0] * m.encode_image(px)[0]).sum(1).min() > 0.9
        assert (e8.encode_text(ids, mask)[0] * m.encode_text(ids, mask)[0]).sum(1).min() > 0.9


def test_int8_static_calibrated_on_validation_images(run):
    import onnx

    cal = calibration_batches(run['cfg'], run['tok'], n=48, batch=32)
    assert [b['pixels'].shape for b in cal] == [(32, 3, 64, 64), (16, 3, 64, 64)]
    val, test = (eval_split(run['cfg'], s) for s in ('val', 'test'))
    assert {r.id for r in val.records}.isdisjoint(r.id for r in test.records)
    assert (cal[0]['pixels'][0] == val.image(0, None).numpy()).all()  # the first validation image, as evaluated
    q = quantize_encoders(run['onnx'], run['cfg'], run['tok'], n_calibration=48)
    assert q['image_static'].name == 'image.int8-static.onnx' and q['text'].name == 'text.int8.onnx'
    ops = {k: {n.op_type for n in onnx.load(q[k]).graph.node} for k in ('image', 'image_static')}
    assert (
        'QLinearConv' in ops['image_static']
        and 'ConvInteger' not in ops['image_static']
        and 'ConvInteger' in ops['image']
    )
    px, ids, mask = sample_batch(run['ds'], run['tok'], run['cfg'].model.max_len, 5)
    with torch.no_grad():
        assert (OrtEncoders(q['image_static'], q['text']).encode_image(px)[0] * run['model'].encode_image(px)[0]).sum(
            1
        ).min() > 0.8
    with pytest.raises(VLLabError, match='at least one calibration batch'):
        quantize_int8(run['onnx']['image'], calibration=[])


@pytest.mark.parametrize('s', [0.3, 0.6])
def test_prune_sparsity(run, s):
    p = prune(run['model'], s)
    assert abs(weight_sparsity(p) - s) <= 0.01
    assert weight_sparsity(run['model']) < 0.01  # the original is untouched
    assert not any(
        n.endswith('_orig') or n.endswith('_mask') for n, _ in p.named_parameters()
    )  # pruning made permanent


def test_table(run):
    rows = deployment_table(run['dir'], sparsities=(0.3, 0.6), n_latency=5)
    assert [r['variant'] for r in rows] == [
        'torch fp32',
        'onnx fp32',
        'onnx int8',
        'onnx int8 static',
        'torch pruned 30%',
        'torch pruned 60%',
    ]
    num = ['size_mb', 'size_zlib_mb', 't2i_R@1', 't2i_R@1_delta', 'min_cosine_vs_fp32'] + [
        f'{k}_b{b}_{s}_ms' for k in ('image', 'text') for b in (1, 32) for s in ('median', 'p99')
    ]
    for r in rows:
        for k in num:
            assert isinstance(r[k], float) and r[k] == r[k], (r['variant'], k)
        assert 0 <= r['t2i_R@1'] <= 1 and r['image_b1_p99_ms'] >= r['image_b1_median_ms'] > 0
    assert rows[0]['t2i_R@1_delta'] == 0 and abs(rows[1]['t2i_R@1_delta']) < 1e-6
    assert abs(rows[2]['t2i_R@1_delta']) <= 0.2 and rows[2]['min_cosine_vs_fp32'] > 0.9
    assert (
        abs(rows[3]['t2i_R@1_delta']) <= 0.2
        and rows[3]['min_cosine_vs_fp32'] > 0.8
        and rows[3]['size_mb'] < rows[1]['size_mb'] / 2
    )
    assert rows[2]['size_mb'] < rows[1]['size_mb'] and rows[5]['size_zlib_mb'] < rows[0]['size_zlib_mb']
    assert abs(rows[4]['weight_sparsity'] - 0.3) <= 0.01 and abs(rows[5]['weight_sparsity'] - 0.6) <= 0.01
    saved = json.loads((run['dir'] / 'export' / 'deployment.json').read_text())
    assert (
        saved['rows'] == json.loads(json.dumps(rows)) and saved['n_latency'] == 5 and saved['calibration_images'] == 256
    )


def test_bad_input(tmp_path):
    with pytest.raises(VLLabError, match='not a run folder'):
        export_onnx(tmp_path / 'missing')
    with pytest.raises(VLLabError, match='not a run folder'):
        deployment_table(tmp_path / 'missing')
    with pytest.raises(VLLabError, match='no such ONNX file'):
        quantize_int8(tmp_path / 'missing.onnx')
