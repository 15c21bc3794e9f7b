"""`vl_lab.serve` over real HTTP on loopback: each endpoint, each kind of bad input with its status, and a service that keeps answering."""
import io, json, threading, time

import httpx
import pytest
import torch

from conftest import png_of_size, scene_image
from vl_lab.synthetic import synth, synth_config
from vl_lab.train import resolve_config, train

LIMIT_MB = 0.25  # upload limit of the service under test


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny trained run with a caption decoder, and a test metrics file."
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('serve')
    synth(d / 'data', synth_config('none', n_images=160), progress=False)
    cfg = resolve_config('cpu-tiny', {'epochs': 1, 'model.tasks': 'contrastive,caption', 'model.conv_channels': '16,32,64,64',
                                      'model.text_width': 64, 'model.text_layers': 2, 'model.embed_dim': 32,
                                      'model.decoder_layers': 1}, data=d / 'data')
    train(cfg, d / 'run', progress=False)
    (d / 'run' / 'eval' / 'test').mkdir(parents=True)
    (d / 'run' / 'eval' / 'test' / 'metrics.json').write_text(json.dumps({'retrieval': {'t2i_R@1': 0.25}}))
    return d / 'run'


@pytest.fixture(scope='module')
def url(run):
    "The service on a free loopback port (uvicorn in a background thread); shut down afterwards."
    import uvicorn
    from vl_lab.serve import make_app
    app = make_app(run, max_upload_mb=LIMIT_MB, max_texts=4, max_text_chars=100, max_pixels=4_000_000, num_beams=1)
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(200):
        if server.started: break
        time.sleep(0.05)
    assert server.started, 'the service did not start'
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == '127.0.0.1'
    yield f'http://127.0.0.1:{port}'
    server.should_exit = True
    t.join(10)
    assert not t.is_alive()


@pytest.fixture(scope='module')
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c: yield c


def png_bytes(img):
    b = io.BytesIO(); img.save(b, 'PNG'); return b.getvalue()


def test_health_and_model(client, run):
    assert client.get('/health').json() == {'status': 'ok'}
    m = client.get('/model').json()
    assert m['run_id'] == run.name and m['backend'] == 'torch' and m['test_metrics'] == {'retrieval': {'t2i_R@1': 0.25}}
    assert m['config']['model']['embed_dim'] == 32 and m['config']['epochs'] == 1
    assert m['batching']['max_batch'] == 32 and m['batching']['image_items'] >= m['batching']['image_batches']
    assert '/embed/text' in client.get('/openapi.json').json()['paths']


def test_multimodal_inference(client):
    img, caps = scene_image(3)
    texts = [caps[0], 'a tiny purple hexagon in the corner', caps[1]]
    r = client.post('/multimodal/inference', files={'image': ('s.png', png_bytes(img), 'image/png')}, data={'texts': texts})
    assert r.status_code == 200, r.text
    res = r.json()['results']
    assert sorted(x['text'] for x in res) == sorted(texts)
    scores = [x['score'] for x in res]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert isinstance(r.json()['caption'], str)


def test_embeddings_match_similarity(client):
    img, caps = scene_image(4)
    data = png_bytes(img)
    e = client.post('/embed/image', files={'image': ('s.png', data)}).json()
    t = client.post('/embed/text', json={'texts': caps[:1]}).json()
    assert e['dim'] == t['dim'] == 32 and len(e['embedding']) == 32 and len(t['embeddings']) == 1
    assert sum(x * x for x in e['embedding']) == pytest.approx(1, abs=1e-4)
    cos = sum(a * b for a, b in zip(e['embedding'], t['embeddings'][0]))
    r = client.post('/multimodal/inference', files={'image': ('s.png', data)}, data={'texts': caps[:1]}).json()
    assert r['results'][0]['score'] == pytest.approx(cos, abs=1e-4)


def test_concurrent_requests_are_batched_and_answered_alike(url, client):
    "16 requests at once: each gets what it gets alone, and some of them shared a forward pass."
    import asyncio
    scenes = [scene_image(10 + i) for i in range(16)]
    reqs = [dict(files={'image': ('s.png', png_bytes(img))}, data={'texts': [c[:100] for c in caps[:2]] + ['a tiny purple hexagon']}) for img, caps in scenes]
    alone = [client.post('/multimodal/inference', **r) for r in reqs]
    assert all(a.status_code == 200 for a in alone)
    alone = [a.json() for a in alone]
    before = client.get('/model').json()['batching']

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post('/multimodal/inference', **r) for r in reqs))
    together = asyncio.run(burst())
    after = client.get('/model').json()['batching']
    for a, t in zip(alone, together):
        assert t.status_code == 200, t.text
        got = {x['text']: x['score'] for x in t.json()['results']}
        assert all(abs(got[x['text']] - x['score']) < 1e-4 for x in a['results'])  # padding to a longer batch changes nothing
    images, batches = after['image_items'] - before['image_items'], after['image_batches'] - before['image_batches']
    assert images == 16 and batches < 16, after  # fewer forward passes than requests


def _multipart(parts, boundary='b0undary'):
    out = b''.join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="x.bin"\r\n'
                   f'Content-Type: application/octet-stream\r\n\r\n'.encode() + v + b'\r\n' for n, v in parts)
    return out + f'--{boundary}--\r\n'.encode(), {'content-type': f'multipart/form-data; boundary={boundary}'}


BAD = {
    'no image': (422, lambda c: c.post('/multimodal/inference', files={'texts': (None, 'a red circle')})),
    'text bytes as image': (415, lambda c: c.post('/embed/image', files={'image': ('a.png', b'hello, I am not an image' * 10)})),
    'truncated png': (415, lambda c: c.post('/embed/image', files={'image': ('a.png', png_bytes(scene_image(1)[0])[:200])})),
    'bomb png 20000x20000': (413, lambda c: c.post('/embed/image', files={'image': ('b.png', png_of_size(20000, 20000))})),
    'upload a little over the limit': (413, lambda c: c.post('/embed/image', files={'image': ('a.png', b'\0' * (int(LIMIT_MB * 2**20) + 10))})),
    'upload far over the limit (Content-Length)': (413, lambda c: c.post('/embed/image', files={'image': ('a.png', b'\0' * 3 * 2**20)})),
    'chunked upload over the limit': (413, lambda c: c.post('/embed/image', headers=_multipart([('image', b'')])[1],
                                                            content=iter([_multipart([('image', b'\0' * 2**20)])[0]] * 2))),
    'no text': (422, lambda c: c.post('/multimodal/inference', files={'image': ('a.png', png_bytes(scene_image(1)[0]))})),
    'too many texts': (422, lambda c: c.post('/multimodal/inference', files={'image': ('a.png', png_bytes(scene_image(1)[0]))},
                                             data={'texts': ['a red circle'] * 5})),
    'over-long text': (422, lambda c: c.post('/embed/text', json={'texts': ['x' * 101]})),
    'empty text list': (422, lambda c: c.post('/embed/text', json={'texts': []})),
    'texts not a list': (422, lambda c: c.post('/embed/text', json={'texts': 5})),
    'not json': (422, lambda c: c.post('/embed/text', content=b'{"texts": [', headers={'content-type': 'application/json'})),
    'not multipart': (422, lambda c: c.post('/multimodal/inference', json={'texts': ['a']})),
    'malformed multipart': (400, lambda c: c.post('/embed/image', content=b'--zz\r\ngarbage without headers',
                                                  headers={'content-type': 'multipart/form-data; boundary=zz'})),
    'multipart without boundary': (400, lambda c: c.post('/embed/image', content=b'abc', headers={'content-type': 'multipart/form-data'})),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input(client, case):
    code, send = BAD[case]
    r = send(client)
    assert r.status_code == code, (case, r.status_code, r.text)
    detail = r.json()['detail']
    assert isinstance(detail, str) and 5 < len(detail) < 300, detail
    assert client.get('/health').json() == {'status': 'ok'}


def test_still_answers_after_bad_input(client):
    for code, send in BAD.values(): send(client)
    assert client.get('/health').json() == {'status': 'ok'}
    img, caps = scene_image(5)
    r = client.post('/multimodal/inference', files={'image': ('s.png', png_bytes(img))}, data={'texts': caps})
    assert r.status_code == 200 and len(r.json()['results']) == 2


def test_onnx_backend_needs_export(run):
    from vl_lab.core import VLLabError
    from vl_lab.serve import make_app
    for b, flags in (('onnx', '--onnx`'), ('onnx-int8', '--onnx --int8`'), ('onnx-int8-static', '--onnx --int8`')):
        with pytest.raises(VLLabError, match=f'vl-lab export RUN_DIR {flags}'): make_app(run, backend=b)
    with pytest.raises(VLLabError, match='unknown backend .* onnx-int8-static'): make_app(run, backend='tensorrt')


def _export_onnx(run, dest):
    "A stand-in for `vl-lab export --onnx` with the agreed names (pixels / input_ids, attention_mask -> embedding)."
    from vl_lab.evaluate import load_run
    model, tok, cfg, _ = load_run(run)
    class Image(torch.nn.Module):
        def __init__(self): super().__init__(); self.m = model
        def forward(self, pixels): return self.m.encode_image(pixels)[0]
    class Text(torch.nn.Module):
        def __init__(self): super().__init__(); self.m = model
        def forward(self, input_ids, attention_mask): return self.m.encode_text(input_ids, attention_mask)[0]
    dest.mkdir(parents=True, exist_ok=True)
    s, ids = cfg.transform.size, torch.ones(2, 8, dtype=torch.long)
    torch.onnx.export(Image().eval(), (torch.zeros(1, 3, s, s),), dest / 'image.onnx', input_names=['pixels'], output_names=['embedding'],
                      dynamic_axes={'pixels': {0: 'n'}}, dynamo=False)
    torch.onnx.export(Text().eval(), (ids, torch.ones_like(ids)), dest / 'text.onnx', input_names=['input_ids', 'attention_mask'],
                      output_names=['embedding'], dynamic_axes={'input_ids': {0: 'n', 1: 'l'}, 'attention_mask': {0: 'n', 1: 'l'}}, dynamo=False)


@pytest.mark.filterwarnings('ignore')
def test_onnx_backend_matches_torch(run, tmp_path):
    "With export files in place, the onnx backend gives the torch scores (a copy of the run, so the service above is untouched)."
    import shutil
    from fastapi.testclient import TestClient
    from vl_lab.serve import make_app
    pytest.importorskip('onnxruntime')
    r2 = tmp_path / run.name
    shutil.copytree(run, r2)
    _export_onnx(r2, r2 / 'export')
    img, caps = scene_image(6)
    req = dict(files={'image': ('s.png', png_bytes(img))}, data={'texts': caps})
    a = TestClient(make_app(r2, num_beams=1)).post('/multimodal/inference', **req).json()
    c = TestClient(make_app(r2, backend='onnx', num_beams=1))
    b = c.post('/multimodal/inference', **req).json()
    assert [x['text'] for x in a['results']] == [x['text'] for x in b['results']]
    assert [x['score'] for x in a['results']] == pytest.approx([x['score'] for x in b['results']], abs=1e-4)
    assert a['caption'] == b['caption'] and c.get('/model').json()['backend'] == 'onnx'
    assert c.post('/embed/text', json={'texts': caps}).json()['dim'] == 32
    # INT8 files beside them (dynamic, and the image encoder static): the int8 backends serve scores close to torch's
    from vl_lab.deploy import quantize_encoders
    from vl_lab.evaluate import load_run
    _, tok, cfg, _ = load_run(r2)
    quantize_encoders({k: r2 / 'export' / f'{k}.onnx' for k in ('image', 'text')}, cfg, tok, n_calibration=32)
    for backend in ('onnx-int8', 'onnx-int8-static'):
        c8 = TestClient(make_app(r2, backend=backend, num_beams=1))
        s8 = {x['text']: x['score'] for x in c8.post('/multimodal/inference', **req).json()['results']}
        assert [s8[x['text']] for x in a['results']] == pytest.approx([x['score'] for x in a['results']], abs=0.1), backend
        assert c8.get('/model').json()['backend'] == backend
