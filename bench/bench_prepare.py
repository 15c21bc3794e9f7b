"""Benchmark: bringing a corpus in WebDataset shards into the lab's form, at 5,000 and 50,000 images, in one run.

img2dataset-style shards (`00000.tar`, ... of KEY.jpg + KEY.txt + KEY.json, 1,000 samples each; 224x224 JPEG images,
each a shapes scene with a per-sample stamp so no two are the same bytes) are brought in by `corpus.bring_in` (every
record read, fingerprinted, checked, written as a COCO folder, its manifest) in a child process of its own, one per
size. Prints pairs/s and the child's peak resident memory (the largest process of its tree) for each size, and the
ratio of peak memory 50k / 5k: the preparation streams the shards, so memory grows only by the per-image index (about
the id, the captions, the hashes and a 32x32 thumbnail each), not by the images. `python bench/bench_prepare.py
[SMALL LARGE]`.
"""

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vl_lab.scenes import make_scene, render_scene, scene_captions

PER_SHARD = 1000
CHILD = """
import resource, sys, time
from vl_lab.corpus import bring_in
t = time.perf_counter()
out = bring_in(sys.argv[1], root=sys.argv[2])
me, workers = (resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(time.perf_counter() - t, me, workers)
"""


def write_shards(dest: Path, n: int, bases: list) -> None:
    "n samples in shards of PER_SHARD: base scenes re-encoded with a stamp of the sample's index in one corner."
    dest.mkdir(parents=True)
    for s in range(0, n, PER_SHARD):
        with tarfile.open(dest / f'{s // PER_SHARD:05d}.tar', 'w') as tf:
            for i in range(s, min(n, s + PER_SHARD)):
                img, caps = bases[i % len(bases)]
                a = np.asarray(img).copy()
                a[:4, :24] = np.frombuffer(i.to_bytes(4, 'big') * 72, np.uint8)[: 4 * 24 * 3].reshape(4, 24, 3)
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, 'JPEG', quality=90)
                key = f'{i:09d}'
                for member, payload in (
                    (f'{key}.jpg', buf.getvalue()),
                    (f'{key}.txt', caps[0].encode()),
                    (f'{key}.json', json.dumps(dict(key=key, caption=caps[0], status='success')).encode()),
                ):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))


def prepare(shards: Path, root: Path) -> tuple[float, float, float]:
    "(seconds, peak RSS in MB of the preparing process, of its largest worker) of bringing `shards` in, in a child."
    r = subprocess.run([sys.executable, '-c', CHILD, str(shards), str(root)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    secs, me, workers = r.stdout.split()[-3:]
    return float(secs), int(me) / 1024, int(workers) / 1024


sizes = [int(x) for x in sys.argv[1:3]] or [5000, 50000]
scenes = [make_scene(np.random.default_rng(1000 + k)) for k in range(200)]
bases = [(render_scene(sc), scene_captions(sc, np.random.default_rng(k), 1)) for k, sc in enumerate(scenes)]
out = {}
with tempfile.TemporaryDirectory() as d:
    for n in sizes:
        t = time.perf_counter()
        write_shards(Path(d) / f'wds-{n}', n, bases)
        made = time.perf_counter() - t
        secs, peak, worker = prepare(Path(d) / f'wds-{n}', Path(d) / f'data-{n}')
        out[n] = (secs, peak)
        print(
            f'{n:6d} images ({-(-n // PER_SHARD)} shards, written in {made:.0f} s): brought in in {secs:.1f} s = '
            f'{n / secs:.0f} pairs/s; peak memory {peak:.0f} MB (largest worker {worker:.0f} MB)'
        )
small, large = sizes
ratio = out[large][1] / out[small][1]
print(f'peak memory {large // 1000}k / {small // 1000}k: {ratio:.2f}x for {large / small:.0f}x the images')
print(f'throughput {large // 1000}k / {small // 1000}k: {(large / out[large][0]) / (small / out[small][0]):.2f}x')
