"""Benchmark: the cleaning resolution check from the image header against a naive full decode, in one run.

On the default shapes corpus (made in a temporary folder), every image is checked for the 224x224 minimum twice:
`read_header` + `check_resolution` (PIL parses the header only), and the naive way (decode all pixels, then read the
size). Prints pairs/s for each (5 captions per image) and their ratio (aim: at least 5x). Then times the whole
`vl-lab clean` with 1 and 2 worker processes.
"""

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from vl_lab.cleaning import CleanConfig, Header, check_resolution, read_header
from vl_lab.synthetic import synth, synth_config

cfg = CleanConfig()


def header_check(data):
    h = read_header(data)
    return isinstance(h, Header) and check_resolution(h, cfg).keep


def naive_check(data):
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return min(im.size) >= cfg.min_size
    except Exception:
        return None  # undecodable: the pipeline's corrupt rule, not this check


def rate(f, blobs, pairs, repeat=3):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        out = [f(b) for b in blobs]
        best = min(best, time.perf_counter() - t)
    return pairs / best, out


with tempfile.TemporaryDirectory() as d:
    raw = Path(d) / 'shapes'
    synth(raw, synth_config(), progress=False)
    blobs = [p.read_bytes() for p in sorted((raw / 'images').iterdir())]
    pairs = 5 * len(blobs)
    fast, a = rate(header_check, blobs, pairs)
    slow, b = rate(naive_check, blobs, pairs)
    assert all(x == y for x, y in zip(a, b) if y is not None), 'the two checks disagree on a decodable image'
    print(f'resolution check over {len(blobs)} images ({pairs} pairs), bytes already in memory, best of 3:')
    print(f'  header only : {fast:10.0f} pairs/s')
    print(f'  full decode : {slow:10.0f} pairs/s')
    print(f'  ratio header/full decode: {fast / slow:.1f}x (aim: >= 5x)')
    cli = str(Path(sys.executable).parent / 'vl-lab')
    for w in (1, 2):
        t = time.perf_counter()
        subprocess.run(
            [cli, 'clean', str(raw), f'{d}/clean{w}', '--workers', str(w), '--quiet'], check=True, capture_output=True
        )
        el = time.perf_counter() - t
        print(
            f'vl-lab clean (all default rules, {w} worker{"s" if w > 1 else ""}): {el:.1f} s, {pairs / el:.0f} pairs/s'
        )
