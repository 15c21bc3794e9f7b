"""Benchmark: how fast `vl-lab synth` writes the default shapes corpus (a benchmark, not a test).

Prints images/s for the whole command (process start, imports, drawing, encoding, writing) and, in the same run,
for drawing alone (scene + render, no encoding or I/O), with their ratio: the share of time the corpus writer adds.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vl_lab.scenes import make_scene, render_scene
from vl_lab.synthetic import SynthConfig

N = int(sys.argv[1]) if len(sys.argv) > 1 else SynthConfig.n_images
cli = str(Path(sys.executable).parent / 'vl-lab')

with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    subprocess.run([cli, 'synth', f'{d}/shapes', '--n-images', str(N), '--quiet'], check=True)
    full = time.perf_counter() - t
    size = sum(p.stat().st_size for p in Path(d, 'shapes').rglob('*') if p.is_file())

t = time.perf_counter()
for i in range(N):
    render_scene(make_scene(np.random.default_rng([0, i, 0])))
draw = time.perf_counter() - t

print(
    f'vl-lab synth, {N} images (default noise): {full:.1f} s, {N / full:.0f} images/s, {size / 2**20:.1f} MiB on disk'
)
print(f'drawing alone (same scenes, no encoding or writing): {N / draw:.0f} images/s')
print(f'ratio whole command / drawing alone (time): {full / draw:.2f}x')
