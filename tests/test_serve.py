"""`vl_lab.serve` over real HTTP on loopback: each endpoint, each kind of bad input with its status, and a service
that keeps answering."""

import asyncio
import io
import json
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import png_of_size, scene_image
from vl_lab.synthetic import synth, synth_config
from vl_lab.run import resolve_config
from vl_lab.train import train

LIMIT_MB = 0.25  # upload limit of the service under test
JSON = {'content-type': 'application/json'}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny trained run with a caption decoder, and a test metrics file."
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('serve')
    synth(d / 'data', synth_config('none', n_images=160), progress=False)
    cfg = resolve_config(
        'cpu-small',
        {
            'epochs': 1,
            'model.tasks': 'contrastive,caption',
        },
        data=d / 'data',
    )
    train(cfg, d / 'run', progress=False)
    (d / 'run' / 'eval' / 'test').mkdir(parents=True)
    (d / 'run' / 'eval' / 'test' / 'metrics.json').write_text(json.dumps({'retrieval': {'t2i_R@1': 0.25}}))
    return d / 'run'


@contextmanager
def serving(app):
    "The base URL of `app` served by uvicorn on a free loopback port (a background thread); shut down afterwards."
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, 'the service did not start'
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == '127.0.0.1'
    yield f'http://127.0.0.1:{port}'
    server.should_exit = True
    t.join(10)
    assert not t.is_alive()


@pytest.fixture(scope='module')
def app(run):
    from vl_lab.serve import make_app

    return make_app(run, max_upload_mb=LIMIT_MB, max_texts=4, max_text_chars=100, max_pixels=4_000_000, num_beams=1)


@pytest.fixture(scope='module')
def url(app):
    "The service on a free loopback port."
    with serving(app) as u:
        yield u


@pytest.fixture(scope='module')
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def png_bytes(img):
    b = io.BytesIO()
    img.save(b, 'PNG')
    return b.getvalue()


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
    r = client.post(
        '/multimodal/inference', files={'image': ('s.png', png_bytes(img), 'image/png')}, data={'texts': texts}
    )
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
    reqs = [
        dict(
            files={'image': ('s.png', png_bytes(img))},
            data={'texts': [c[:100] for c in caps[:2]] + ['a tiny purple hexagon']},
        )
        for img, caps in scenes
    ]
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
        assert all(
            abs(got[x['text']] - x['score']) < 1e-4 for x in a['results']
        )  # padding to a longer batch changes nothing
    images, batches = after['image_items'] - before['image_items'], after['image_batches'] - before['image_batches']
    assert images == 16 and batches < 16, after  # fewer forward passes than requests


def _multipart(parts, boundary='b0undary'):
    out = b''.join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="x.bin"\r\n'
        f'Content-Type: application/octet-stream\r\n\r\n'.encode()
        + v
        + b'\r\n'
        for n, v in parts
    )
    return out + f'--{boundary}--\r\n'.encode(), {'content-type': f'multipart/form-data; boundary={boundary}'}


BAD = {
    'no image': (422, lambda c: c.post('/multimodal/inference', files={'texts': (None, 'a red circle')})),
    'text bytes as image': (
        415,
        lambda c: c.post('/embed/image', files={'image': ('a.png', b'hello, I am not an image' * 10)}),
    ),
    'truncated png': (
        415,
        lambda c: c.post('/embed/image', files={'image': ('a.png', png_bytes(scene_image(1)[0])[:200])}),
    ),
    'bomb png 20000x20000': (
        413,
        lambda c: c.post('/embed/image', files={'image': ('b.png', png_of_size(20000, 20000))}),
    ),
    'upload a little over the limit': (
        413,
        lambda c: c.post('/embed/image', files={'image': ('a.png', b'\0' * (int(LIMIT_MB * 2**20) + 10))}),
    ),
    'upload far over the limit (Content-Length)': (
        413,
        lambda c: c.post('/embed/image', files={'image': ('a.png', b'\0' * 3 * 2**20)}),
    ),
    'chunked upload over the limit': (
        413,
        lambda c: c.post(
            '/embed/image',
            headers=_multipart([('image', b'')])[1],
            content=iter([_multipart([('image', b'\0' * 2**20)])[0]] * 2),
        ),
    ),
    'no text': (
        422,
        lambda c: c.post('/multimodal/inference', files={'image': ('a.png', png_bytes(scene_image(1)[0]))}),
    ),
    'too many texts': (
        422,
        lambda c: c.post(
            '/multimodal/inference',
            files={'image': ('a.png', png_bytes(scene_image(1)[0]))},
            data={'texts': ['a red circle'] * 5},
        ),
    ),
    'over-long text': (422, lambda c: c.post('/embed/text', json={'texts': ['x' * 101]})),
    'empty text list': (422, lambda c: c.post('/embed/text', json={'texts': []})),
    'texts not a list': (422, lambda c: c.post('/embed/text', json={'texts': 5})),
    'not json': (
        422,
        lambda c: c.post('/embed/text', content=b'{"texts": [', headers={'content-type': 'application/json'}),
    ),
    'not multipart': (422, lambda c: c.post('/multimodal/inference', json={'texts': ['a']})),
    'malformed multipart': (
        400,
        lambda c: c.post(
            '/embed/image',
            content=b'--zz\r\ngarbage without headers',
            headers={'content-type': 'multipart/form-data; boundary=zz'},
        ),
    ),
    'multipart without boundary': (
        400,
        lambda c: c.post('/embed/image', content=b'abc', headers={'content-type': 'multipart/form-data'}),
    ),
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
    for code, send in BAD.values():
        send(client)
    assert client.get('/health').json() == {'status': 'ok'}
    img, caps = scene_image(5)
    r = client.post('/multimodal/inference', files={'image': ('s.png', png_bytes(img))}, data={'texts': caps})
    assert r.status_code == 200 and len(r.json()['results']) == 2


def test_onnx_backend_needs_export(run):
    from vl_lab.core import VLLabError
    from vl_lab.serve import make_app

    for b, flags in (('onnx', '--onnx`'), ('onnx-int8', '--onnx --int8`'), ('onnx-int8-static', '--onnx --int8`')):
        with pytest.raises(VLLabError, match=f'vl-lab export RUN_DIR {flags}'):
            make_app(run, backend=b)
    with pytest.raises(VLLabError, match='unknown backend .* onnx-int8-static'):
        make_app(run, backend='tensorrt')


def _export_onnx(run, dest):
    "A stand-in for `vl-lab export --onnx` with the agreed names (pixels / input_ids, attention_mask -> embedding)."
    from vl_lab.run import load_run

    model, tok, cfg, _ = load_run(run)

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixels):
            return self.m.encode_image(pixels)[0]

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m.encode_text(input_ids, attention_mask)[0]

    dest.mkdir(parents=True, exist_ok=True)
    s, ids = cfg.transform.size, torch.ones(2, 8, dtype=torch.long)
    torch.onnx.export(
        Image().eval(),
        (torch.zeros(1, 3, s, s),),
        dest / 'image.onnx',
        input_names=['pixels'],
        output_names=['embedding'],
        dynamic_axes={'pixels': {0: 'n'}},
        dynamo=False,
    )
    torch.onnx.export(
        Text().eval(),
        (ids, torch.ones_like(ids)),
        dest / 'text.onnx',
        input_names=['input_ids', 'attention_mask'],
        output_names=['embedding'],
        dynamic_axes={'input_ids': {0: 'n', 1: 'l'}, 'attention_mask': {0: 'n', 1: 'l'}},
        dynamo=False,
    )


@pytest.mark.filterwarnings('ignore')
def test_onnx_backend_matches_torch(run, tmp_path):
    """With export files in place, the onnx backend gives the torch scores (a copy of the run, so the service above is
    untouched)."""
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
    from vl_lab.run import load_run

    _, tok, cfg, _ = load_run(r2)
    quantize_encoders({k: r2 / 'export' / f'{k}.onnx' for k in ('image', 'text')}, cfg, tok, n_calibration=32)
    for backend in ('onnx-int8', 'onnx-int8-static'):
        c8 = TestClient(make_app(r2, backend=backend, num_beams=1))
        s8 = {x['text']: x['score'] for x in c8.post('/multimodal/inference', **req).json()['results']}
        assert [s8[x['text']] for x in a['results']] == pytest.approx([x['score'] for x in a['results']], abs=0.1), (
            backend
        )
        assert c8.get('/model').json()['backend'] == backend
        # dynamic INT8 scales over the batch: each row is encoded alone, so batch mates change no answer
        together = c8.post('/embed/text', json={'texts': caps}).json()['embeddings']
        alone = [c8.post('/embed/text', json={'texts': [t]}).json()['embeddings'][0] for t in caps]
        assert abs(__import__('numpy').array(together) - __import__('numpy').array(alone)).max() < 1e-6, backend


def jpeg_bytes(w, h):
    from PIL import Image

    b = io.BytesIO()
    Image.new('RGB', (w, h), (200, 30, 30)).save(b, 'JPEG', quality=80)
    return b.getvalue()


async def _burst(url, sends):
    "Send all requests at once; their responses in order."
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        return await asyncio.gather(*(send(c) for send in sends))


def _text_request(texts):
    return lambda c: c.post('/embed/text', json={'texts': texts})


def _close(a, b, tol=1e-4):
    return len(a) == len(b) and all(abs(x - y) < tol for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_lone_surrogate_text_is_422_and_spares_its_batch(url, client):
    "JSON texts with a lone surrogate: 422 with a reason; the good requests sent at the same moment answered as alone."
    good = [[f'a red circle and {n} blue squares'] for n in range(36)]
    alone = [client.post('/embed/text', json={'texts': t}).json()['embeddings'] for t in good]

    def bad(c):
        return c.post('/embed/text', content=b'{"texts": ["\\ud800 x"]}', headers=JSON)

    sends = [_text_request(t) for t in good]
    for i in (3, 12, 21, 30):
        sends.insert(i, bad)
    answers = asyncio.run(_burst(url, sends))
    bad_answers = [answers[i] for i in (3, 12, 21, 30)]
    good_answers = [r for i, r in enumerate(answers) if i not in (3, 12, 21, 30)]
    assert [r.status_code for r in good_answers] == [200] * 36, [r.status_code for r in good_answers]
    assert all(_close(r.json()['embeddings'], a) for r, a in zip(good_answers, alone))
    assert [r.status_code for r in bad_answers] == [422] * 4, [r.text for r in bad_answers]
    assert all('surrogate' in r.json()['detail'] for r in bad_answers), bad_answers[0].text
    assert client.get('/health').json() == {'status': 'ok'}


def test_failure_in_a_batch_fails_only_its_request(app, url, client, monkeypatch):
    "The batched function fails on one request's items: that request gets its 4xx, the others their answers."
    from fastapi import HTTPException

    texts = app.state.engine.texts
    real, shared = texts.fn, []

    def poisoned(items):
        if any('poison' in t for t in items):
            shared.append(len(items))
            raise HTTPException(422, 'A poisoned text cannot be encoded.')
        return real(items)

    good = [[f'a green triangle above {n} circles'] for n in range(24)]
    alone = [client.post('/embed/text', json={'texts': t}).json()['embeddings'] for t in good]
    monkeypatch.setattr(texts, 'fn', poisoned)
    for _ in range(5):  # until the poisoned request shared a pass with others (almost always the first time)
        answers = asyncio.run(
            _burst(
                url,
                [_text_request(t) for t in good[:12]]
                + [_text_request(['poison'])]
                + [_text_request(t) for t in good[12:]],
            )
        )
        if max(shared, default=0) > 1:
            break
    assert max(shared, default=0) > 1, shared
    poisoned_answer = answers.pop(12)
    assert [r.status_code for r in answers] == [200] * 24, [r.text for r in answers if r.status_code != 200][:2]
    assert all(_close(r.json()['embeddings'], a) for r, a in zip(answers, alone))
    assert poisoned_answer.status_code == 422, poisoned_answer.text
    assert poisoned_answer.json()['detail'] == 'A poisoned text cannot be encoded.'


def test_over_budget_images_are_413_with_the_limit(run, client):
    "16-bit pixels count twice against the pixel budget; the default budget is far below the cleaning limit."
    import inspect
    from vl_lab.cleaning import CleanConfig
    from vl_lab.serve import make_app

    r = client.post(
        '/embed/image', files={'image': ('a.png', png_of_size(1500, 1500, depth=16))}
    )  # 2.25 M 16-bit: 4.5 M > 4 M
    assert r.status_code == 413 and '4,000,000' in r.json()['detail'], r.text
    assert '1500x1500' in r.json()['detail'] and '16-bit' in r.json()['detail'], r.text
    r = client.post('/embed/image', files={'image': ('a.png', png_of_size(2500, 2500))})  # 6.25 M 1-bit pixels > 4 M
    assert r.status_code == 413 and '4,000,000' in r.json()['detail'], r.text
    default = inspect.signature(make_app).parameters['max_pixels'].default
    assert 2048 * 2048 <= default <= 4096 * 4096 < CleanConfig().max_pixels, default
    c = TestClient(make_app(run, num_beams=1))
    r = c.post(
        '/embed/image', files={'image': ('a.png', png_of_size(6000, 6000, depth=16))}
    )  # 7 s and 0.7 GB unbounded
    assert r.status_code == 413 and f'{default:,}' in r.json()['detail'], r.text


def test_jpeg_is_decoded_at_reduced_size(client, monkeypatch):
    "A JPEG decodes at 1/2..1/8 scale (Image.draft): fewer pixels decoded, and the budget applies to the reduced size."
    from PIL import ImageFile

    decoded, real_load = [], ImageFile.ImageFile.load

    def load(self):
        decoded.append((self.format, self.size))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, 'load', load)
    r = client.post('/embed/image', files={'image': ('a.jpg', jpeg_bytes(1800, 1200))})
    assert r.status_code == 200, r.text
    assert decoded and all(f == 'JPEG' and w <= 1800 // 4 and h <= 1200 // 4 for f, (w, h) in decoded), decoded
    r = client.post('/embed/image', files={'image': ('a.jpg', jpeg_bytes(4000, 4000))})  # 16 M pixels; at 1/8: 0.25 M
    assert r.status_code == 200, r.text


def test_decodes_are_bounded_by_max_decodes(run, monkeypatch):
    "Eight image requests at once, a service with max_decodes=2: never more than 2 images decode at the same time."
    import vl_lab.serve as serve_mod

    lock, now, peak, real = threading.Lock(), [0], [0], serve_mod.load_pixels

    def counted(*args, **kwargs):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            time.sleep(0.3)
            return real(*args, **kwargs)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(serve_mod, 'load_pixels', counted)
    data = png_bytes(scene_image(7)[0])

    def send(c):
        return c.post('/embed/image', files={'image': ('s.png', data)})

    with serving(serve_mod.make_app(run, num_beams=1, max_decodes=2)) as u:
        answers = asyncio.run(_burst(u, [send] * 8))
        assert httpx.get(u + '/health').json() == {'status': 'ok'}
    assert [r.status_code for r in answers] == [200] * 8
    assert peak[0] == 2, peak  # bounded, and the requests did overlap


def _no_server_path(texts, *paths):
    return [(p, t[:200]) for t in texts for p in map(str, paths) if p in t]


def test_no_server_path_in_any_response(run, url, client):
    "No response of any endpoint (answers and refusals) holds an absolute path of the server: names only."
    paths = (run, run.parent, run.resolve(), run.parent.resolve())
    m = client.get('/model')
    assert not _no_server_path([m.text], *paths)
    assert m.json()['run_id'] == run.name and m.json()['config']['data'] == 'data', m.json()['config']['data']
    img, caps = scene_image(8)
    texts = [client.get(p).text for p in ('/health', '/model', '/openapi.json', '/nowhere')]
    image = {'image': ('s.png', png_bytes(img))}
    texts += [
        client.post('/multimodal/inference', files=image, data={'texts': caps}).text,
        client.post('/embed/image', files=image).text,
        client.post('/embed/text', json={'texts': caps}).text,
        client.post('/embed/text', content=b'{"texts": ["\\ud800"]}', headers=JSON).text,
    ]
    texts += [send(client).text for _, send in BAD.values()]
    assert not _no_server_path(texts, *paths)
