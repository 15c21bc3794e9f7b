"""Benchmark: a bounded load test of the `vl_lab.serve` service on loopback.

Starts the service (a subprocess on a free 127.0.0.1 port) for each backend, then sends REQUESTS requests to
`POST /multimodal/inference` (one shapes scene + 3 texts) at CONCURRENCY in flight (httpx.AsyncClient and a
semaphore), stopping early at a total time cap. Prints the zero-error check, throughput (req/s) and p50/p99 latency.
Backends: torch always; onnx / onnx-int8 / onnx-int8-static when RUN_DIR/export holds their files, else says why they were skipped.
Each backend is measured without batching (--max-batch 1, the baseline) and with it (32), and the ratio printed.

    python bench/bench_serve.py [RUN_DIR] [--requests 2000] [--concurrency 16] [--time-cap 600]

Without RUN_DIR a `cpu-tiny` contrastive run is trained on a 160-image corpus in a temporary folder first, and exported
to ONNX fp32 and INT8 (dynamic, and static for the image encoder), so all four backends are measured.
"""
import argparse, asyncio, io, os, socket, subprocess, sys, tempfile, time
from pathlib import Path

import httpx
import numpy as np

from vl_lab.serve import ONNX_FILES


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start(run_dir, backend, port, max_batch):
    code = f"from vl_lab.serve import serve; serve({str(run_dir)!r}, host='127.0.0.1', port={port}, backend={backend!r}, max_batch={max_batch})"
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, t0 = f'http://127.0.0.1:{port}', time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None: raise RuntimeError(f'the service exited: {p.stderr.read()[-1000:]}')
        try:
            if httpx.get(url + '/health', timeout=1).status_code == 200: return p, url
        except httpx.TransportError: time.sleep(0.2)
    p.terminate(); raise RuntimeError('the service did not start in 120 s')


async def load(url, payload, n, concurrency, cap):
    img, texts = payload
    sem, lat, errors, done = asyncio.Semaphore(concurrency), [], [], 0
    t_end = time.perf_counter() + cap
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def one():
            nonlocal done
            async with sem:
                if time.perf_counter() > t_end: return
                t = time.perf_counter()
                try:
                    r = await c.post('/multimodal/inference', files={'image': ('s.png', img, 'image/png')}, data={'texts': texts})
                    if r.status_code != 200: errors.append(f'{r.status_code}: {r.text[:100]}')
                except httpx.HTTPError as e: errors.append(type(e).__name__)
                lat.append(time.perf_counter() - t); done += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    return done, errors, wall, np.array(lat)


def bench(run_dir, backend, payload, a, max_batch):
    port = free_port()
    p, url = start(run_dir, backend, port, max_batch)
    try:
        asyncio.run(load(url, payload, min(a.concurrency * 2, a.requests), a.concurrency, a.time_cap))  # warm-up
        done, errors, wall, lat = asyncio.run(load(url, payload, a.requests, a.concurrency, a.time_cap))
        alive = httpx.get(url + '/health', timeout=5).json() == {'status': 'ok'}
        b = httpx.get(url + '/model', timeout=5).json()['batching']
    finally:
        p.terminate(); p.wait(10)
    capped = f' (time cap {a.time_cap:.0f} s reached)' if done < a.requests else ''
    label = f'{backend} batch<={max_batch}'
    print(f'{label:26s} {done:5d}/{a.requests} requests{capped}; errors {len(errors)} ({"OK: zero errors" if not errors else errors[:3]}); '
          f'{done / wall:7.1f} req/s; p50 {1e3 * np.percentile(lat, 50):7.1f} ms, p99 {1e3 * np.percentile(lat, 99):7.1f} ms; '
          f'{b["image_items"] / max(b["image_batches"], 1):4.1f} images per forward pass; health after: {"ok" if alive else "FAILED"}')
    return not errors and alive, done / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('run_dir', nargs='?')
    ap.add_argument('--requests', type=int, default=2000)
    ap.add_argument('--concurrency', type=int, default=16)
    ap.add_argument('--time-cap', type=float, default=600, help='seconds per backend')
    a = ap.parse_args()
    from vl_lab.scenes import make_scene, render_scene, scene_captions
    s = make_scene(np.random.default_rng(0))
    b = io.BytesIO(); render_scene(s).save(b, 'PNG')
    payload = (b.getvalue(), scene_captions(s, np.random.default_rng(0), 2) + ['a tiny purple hexagon in the corner'])
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(a.run_dir) if a.run_dir else None
        if run_dir is None:
            from vl_lab.synthetic import synth, synth_config
            from vl_lab.train import resolve_config, train
            synth(Path(d) / 'data', synth_config('none', n_images=160), progress=False)
            run_dir = Path(d) / 'run'
            train(resolve_config('cpu-tiny', {'epochs': 1}, data=Path(d) / 'data'), run_dir, progress=False)
            from vl_lab.deploy import export_onnx, quantize_encoders
            from vl_lab.evaluate import load_run
            _, tok, cfg, _ = load_run(run_dir)
            quantize_encoders(export_onnx(run_dir), cfg, tok)
        print(f'run {run_dir.name}: {a.requests} requests to /multimodal/inference at concurrency {a.concurrency}, '
              f'cap {a.time_cap:.0f} s per backend, {os.cpu_count()} CPU cores')
        ok = True
        for backend in ('torch', *ONNX_FILES):
            missing = [f for f in ONNX_FILES.get(backend, ()) if not (run_dir / 'export' / f).is_file()]
            if missing:
                print(f'{backend:26s} skipped: no {", ".join(missing)} in {run_dir / "export"} (run `vl-lab export RUN_DIR --onnx --int8` first)')
                continue
            ok1, one = bench(run_dir, backend, payload, a, 1)  # the baseline: every request its own forward pass
            ok2, many = bench(run_dir, backend, payload, a, 32)
            ok = ok and ok1 and ok2
            print(f'{backend:26s} throughput with batching / without: {many / one:.2f}x')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
