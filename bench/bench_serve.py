"""Benchmark: a bounded load test of the `vl_lab.serve` service on loopback, with bad requests mixed into good ones.

Starts the service (a subprocess on a free 127.0.0.1 port, default limits) for each backend, then sends REQUESTS good
requests, drawn from a pool of distinct ones over the three endpoints (/multimodal/inference: a shapes scene + 3 texts,
/embed/image, /embed/text), shuffled with BAD_FRACTION x REQUESTS bad ones (lone-surrogate texts, empty texts,
malformed JSON, non-images, a truncated PNG, over-budget and bomb images, ...), at CONCURRENCY in flight (httpx and a
semaphore), stopping early at a time cap, while a second client asks /health every 50 ms. Each distinct good request is
first answered alone; under load every good answer must equal its lone answer (embeddings and scores within 1e-4).
Prints, per backend and batch size: good requests that failed (must be 0), bad requests answered 4xx (must be all) and
5xx (must be 0), good answers equal to the same request alone, whether /health answered throughout, throughput and
p50/p99 latency of the good requests, images per forward pass, and tracebacks in the server's log.
Backends: torch always; onnx / onnx-int8 / onnx-int8-static when RUN_DIR/export holds their files, else says why they
were skipped. Each backend is measured without batching (--max-batch 1, the baseline) and with it (32), and the ratio
of good-request throughputs printed. Exit status 1 when a check fails.

    python bench/bench_serve.py [RUN_DIR] [--requests 2000] [--bad-fraction 0.05] [--concurrency 16] [--time-cap 600]
                                [--backends torch,onnx,onnx-int8,onnx-int8-static]

Without RUN_DIR a `cpu-tiny` contrastive run is trained on a 160-image corpus in a temporary folder first, and exported
to ONNX fp32 and INT8 (dynamic, and static for the image encoder), so all four backends are measured.
"""

import argparse
import asyncio
import collections
import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

from vl_lab.serve import ONNX_FILES

TOL = 1e-4  # a good answer under load may differ from its lone answer by this much (padding, batch order)
JSON = {'content-type': 'application/json'}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start(run_dir, backend, port, max_batch, log):
    code = (
        f"from vl_lab.serve import serve; serve({str(run_dir)!r}, host='127.0.0.1', port={port}, "
        f"backend={backend!r}, max_batch={max_batch})"
    )
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=log)  # a file: never blocks
    url, t0 = f'http://127.0.0.1:{port}', time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None:
            raise RuntimeError(f'the service exited: {Path(log.name).read_text()[-1000:]}')
        try:
            if httpx.get(url + '/health', timeout=1).status_code == 200:
                return p, url
        except httpx.TransportError:
            time.sleep(0.2)
    p.terminate()
    raise RuntimeError('the service did not start in 120 s')


def encoded(img, fmt):
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def png_of(w, h, bits):
    "A valid greyscale PNG of w x h black pixels with `bits` per pixel (1 or 16): a few KB, huge when decoded."

    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xFFFFFFFF)

    z, row = zlib.compressobj(9), b'\x00' * (1 + (w * bits + 7) // 8)
    parts = [z.compress(row) for _ in range(h)] + [z.flush()]
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, bits, 0, 0, 0, 0))
        + chunk(b'IDAT', b''.join(parts))
        + chunk(b'IEND', b'')
    )


def good_pool(n_scenes=24):
    "Distinct good requests (path, httpx kwargs): per scene one of each endpoint; every 4th image a JPEG."
    from vl_lab.scenes import make_scene, render_scene, scene_captions

    pool = []
    for i in range(n_scenes):
        s = make_scene(np.random.default_rng(i))
        name, fmt = ('s.jpg', 'JPEG') if i % 4 == 3 else ('s.png', 'PNG')
        image = (name, encoded(render_scene(s), fmt))
        caps = scene_captions(s, np.random.default_rng(i), 2)
        texts = caps + ['a tiny purple hexagon']
        pool.append(('/multimodal/inference', dict(files={'image': image}, data={'texts': texts})))
        pool.append(('/embed/image', dict(files={'image': image})))
        pool.append(('/embed/text', dict(json={'texts': caps})))
    return pool


def bad_pool(a_png):
    "Bad requests (what, path, httpx kwargs): each must get a 4xx."
    text_field = {'texts': (None, 'a red circle')}
    return [
        ('lone surrogate', '/embed/text', dict(content=b'{"texts": ["a red \\ud800 circle"]}', headers=JSON)),
        (
            'lone surrogate beside a good text',
            '/embed/text',
            dict(content=b'{"texts": ["a blue square", "\\udfff"]}', headers=JSON),
        ),
        ('empty text list', '/embed/text', dict(json={'texts': []})),
        ('blank text', '/embed/text', dict(json={'texts': ['   ']})),
        ('malformed JSON', '/embed/text', dict(content=b'{"texts": [', headers=JSON)),
        ('texts not a list', '/embed/text', dict(json={'texts': 5})),
        ('not an image', '/embed/image', dict(files={'image': ('a.png', b'hello, I am not an image' * 20)})),
        (
            'not an image, with texts',
            '/multimodal/inference',
            dict(files={'image': ('a.png', b'%PDF-1.4 not an image'), **text_field}),
        ),
        ('truncated PNG', '/embed/image', dict(files={'image': ('a.png', a_png[:200])})),
        ('16-bit PNG 6000x6000', '/embed/image', dict(files={'image': ('a.png', png_of(6000, 6000, 16))})),
        (
            'bomb PNG 20000x20000',
            '/multimodal/inference',
            dict(files={'image': ('a.png', png_of(20000, 20000, 1)), **text_field}),
        ),
        ('no texts', '/multimodal/inference', dict(files={'image': ('a.png', a_png)})),
    ]


def vectors(path, body):
    "The numbers of an answer, keyed: embeddings, or each text's score (and nothing else)."
    if path == '/embed/text':
        return {i: v for i, v in enumerate(body['embeddings'])}
    if path == '/embed/image':
        return {0: body['embedding']}
    return {x['text']: [x['score']] for x in body['results']}


def max_diff(a, b):
    "Largest absolute difference between two answers' numbers (inf when their keys differ)."
    if a.keys() != b.keys():
        return float('inf')
    return max(float(np.abs(np.subtract(a[k], b[k])).max()) for k in a)


async def alone(url, pool):
    "Each good request answered alone, in turn."
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for path, kw in pool:
            r = await c.post(path, **kw)
            r.raise_for_status()
            out.append(vectors(path, r.json()))
    return out


async def poll_health(url, stop, polls):
    "Ask /health every 50 ms until `stop` is set; `polls` gets (ok, seconds) each time."
    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                ok = (await c.get('/health')).json() == {'status': 'ok'}
            except (httpx.HTTPError, ValueError):
                ok = False
            polls.append((ok, time.perf_counter() - t))
            await asyncio.sleep(0.05)


async def load(url, plan, good, bad, concurrency, cap):
    "Send the plan's requests; a list of (kind, index, status or exception name, body or None, seconds)."
    sem, out, t_end = asyncio.Semaphore(concurrency), [], time.perf_counter() + cap
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    stop, polls = asyncio.Event(), []
    poller = asyncio.create_task(poll_health(url, stop, polls))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def one(kind, i):
            path, kw = good[i] if kind == 'good' else bad[i][1:]
            async with sem:
                if time.perf_counter() > t_end:
                    return
                t = time.perf_counter()
                try:
                    r = await c.post(path, **kw)
                    body = r.json() if r.status_code == 200 else None
                    out.append((kind, i, r.status_code, body, time.perf_counter() - t))
                except httpx.HTTPError as e:
                    out.append((kind, i, type(e).__name__, None, time.perf_counter() - t))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(kind, i) for kind, i in plan))
        wall = time.perf_counter() - t0
    stop.set()
    await poller
    return out, wall, polls


def bench(run_dir, backend, good, bad, a, max_batch):
    rng = np.random.default_rng(0)
    n_bad = round(a.bad_fraction * a.requests)
    plan = [('good', int(i)) for i in rng.integers(len(good), size=a.requests)]
    plan += [('bad', i % len(bad)) for i in range(n_bad)]
    plan = [plan[i] for i in rng.permutation(len(plan))]
    with tempfile.NamedTemporaryFile('w+', suffix='.log') as log:
        p, url = start(run_dir, backend, free_port(), max_batch, log)
        try:
            lone = asyncio.run(alone(url, good))
            asyncio.run(load(url, plan[: a.concurrency * 2], good, bad, a.concurrency, a.time_cap))  # warm-up
            out, wall, polls = asyncio.run(load(url, plan, good, bad, a.concurrency, a.time_cap))
            alive = httpx.get(url + '/health', timeout=5).json() == {'status': 'ok'}
            b = httpx.get(url + '/model', timeout=5).json()['batching']
        finally:
            p.terminate()
            p.wait(10)
        tracebacks = Path(log.name).read_text().count('Traceback')
    goods = [x for x in out if x[0] == 'good']
    bads = [x for x in out if x[0] == 'bad']
    failed = [x for x in goods if x[2] != 200]
    answered = [(good[i][0], max_diff(vectors(good[i][0], body), lone[i])) for _, i, s, body, _ in goods if s == 200]
    diffs = [d for _, d in answered]
    equal = sum(d < TOL for d in diffs)
    unequal = collections.Counter(path for path, d in answered if d >= TOL)
    by_status = collections.Counter(s for _, _, s, _, _ in bads)
    n4 = sum(isinstance(s, int) and 400 <= s < 500 for s in by_status.elements())
    n5 = sum(isinstance(s, int) and s >= 500 for s in by_status.elements())
    wrong = sorted({bad[i][0] for _, i, s, _, _ in bads if not (isinstance(s, int) and 400 <= s < 500)})
    health_ok = alive and bool(polls) and all(ok for ok, _ in polls)
    lat = np.array([x[4] for x in goods]) if goods else np.zeros(1)
    capped = f' (time cap {a.time_cap:.0f} s reached)' if len(out) < len(plan) else ''
    ok = not failed and n4 == len(bads) == n_bad and n5 == 0 and equal == len(goods) == a.requests and health_ok
    print(
        f'{backend} batch<={max_batch}: {len(goods)} good + {len(bads)} bad requests at concurrency {a.concurrency} '
        f'in {wall:.1f} s{capped}: {"OK" if ok else "FAILED"}'
    )
    examples = ', '.join(f'{good[i][0]}: {s}' for _, i, s, _, _ in failed[:3])
    print(f'  good requests that failed: {len(failed)} (must be 0){"; e.g. " + examples if failed else ""}')
    print(
        f'  bad requests answered 4xx: {n4}/{len(bads)} (must be all); 5xx: {n5} (must be 0); '
        f'by status {dict(sorted(by_status.items(), key=str))}{"; not 4xx: " + ", ".join(wrong) if wrong else ""}'
    )
    print(
        f'  good answers equal to the same request alone: {equal}/{len(goods)} '
        f'(max abs diff {max(diffs, default=0):.1e}, tolerance {TOL:.0e})'
        f'{"; unequal by endpoint " + str(dict(unequal)) if unequal else ""}'
    )
    slowest = max((t for _, t in polls), default=float('nan'))
    print(
        f'  /health answered throughout: {"yes" if health_ok else "NO"} ({sum(ok for ok, _ in polls)}/{len(polls)} '
        f'polls every 50 ms answered, slowest {1e3 * slowest:.0f} ms; after the load: {"ok" if alive else "FAILED"})'
    )
    print(
        f'  good requests: {len(goods) / wall:.1f} req/s; p50 {1e3 * np.percentile(lat, 50):.1f} ms, '
        f'p99 {1e3 * np.percentile(lat, 99):.1f} ms; {b["image_items"] / max(b["image_batches"], 1):.1f} images per '
        f'forward pass; batches split by the error boundary: {b.get("batches_split", "n/a")}; '
        f'tracebacks in the server log: {tracebacks}'
    )
    return ok, len(goods) / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('run_dir', nargs='?')
    ap.add_argument('--requests', type=int, default=2000, help='good requests per measurement')
    ap.add_argument('--bad-fraction', type=float, default=0.05, help='bad requests, as a fraction of the good ones')
    ap.add_argument('--concurrency', type=int, default=16)
    ap.add_argument('--time-cap', type=float, default=600, help='seconds per measurement')
    ap.add_argument('--backends', default=','.join(('torch', *ONNX_FILES)))
    a = ap.parse_args()
    good = good_pool()
    bad = bad_pool(good[1][1]['files']['image'][1])
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(a.run_dir) if a.run_dir else None
        if run_dir is None:
            from vl_lab.synthetic import synth, synth_config
            from vl_lab.run import resolve_config
            from vl_lab.train import train

            synth(Path(d) / 'data', synth_config('none', n_images=160), progress=False)
            run_dir = Path(d) / 'run'
            train(resolve_config('cpu-tiny', {'epochs': 1}, data=Path(d) / 'data'), run_dir, progress=False)
            if set(a.backends.split(',')) - {'torch'}:
                from vl_lab.deploy import export_onnx, quantize_encoders
                from vl_lab.run import load_run

                _, tok, cfg, _ = load_run(run_dir)
                quantize_encoders(export_onnx(run_dir), cfg, tok)
        print(
            f'run {run_dir.name}: {a.requests} good requests ({len(good)} distinct, 3 endpoints) + '
            f'{round(a.bad_fraction * a.requests)} bad ({len(bad)} kinds) at concurrency {a.concurrency}, '
            f'cap {a.time_cap:.0f} s per measurement, {os.cpu_count()} CPU cores'
        )
        ok = True
        for backend in a.backends.split(','):
            missing = [f for f in ONNX_FILES.get(backend, ()) if not (run_dir / 'export' / f).is_file()]
            if missing:
                print(
                    f'{backend}: skipped: no {", ".join(missing)} in {run_dir.name}/export '
                    f'(run `vl-lab export RUN_DIR --onnx --int8` first)'
                )
                continue
            ok1, one = bench(run_dir, backend, good, bad, a, 1)  # the baseline: every request its own forward pass
            ok2, many = bench(run_dir, backend, good, bad, a, 32)
            ok = ok and ok1 and ok2
            print(f'{backend}: good-request throughput with batching / without: {many / one:.2f}x')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
