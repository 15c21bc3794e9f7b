"""The shapes corpus: determinism, the COCO format, measured noise rates, and labels that are true of the files."""

import hashlib
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import run_cli
from vl_lab.scenes import COLORS
from vl_lab.synthetic import CAPTION_NOISE, IMAGE_NOISE, synth_config


def hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob('*'))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    for name, seed in (('a', 5), ('b', 5), ('c', 6)):
        run_cli('synth', tmp_path / name, '--n-images', 80, '--seed', seed, '--quiet', check=True)
    a, b, c = (hashes(tmp_path / n) for n in 'abc')
    assert len(a) == 80 + 2 and a == b
    assert a['annotations.json'] != c['annotations.json']
    assert sum(a[k] != c.get(k) for k in a) > 70


def load(root):
    return json.loads((root / 'annotations.json').read_text()), json.loads((root / 'noise_labels.json').read_text())


def test_noise_rates_match_configuration(heavy_corpus):
    "Each kind is drawn independently per item: its count is binomial around the configured rate (4.5 sigma)."
    ann, noise = load(heavy_corpus)
    rates = synth_config('heavy').noise.__dict__
    for level, kinds, labels in (
        ('image', IMAGE_NOISE, noise['images']),
        ('caption', CAPTION_NOISE, noise['annotations']),
    ):
        n, counts = len(labels), Counter(lab['kind'] for lab in labels)
        for k in kinds:
            p = rates[k]
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(counts[k] - n * p) <= 4.5 * sigma + 1, (k, counts[k], n * p, sigma)
            assert counts[k] > 0, k


def test_none_preset_is_clean(tmp_path):
    run_cli('synth', tmp_path / 'c', '--n-images', 50, '--noise', 'none', '--quiet', check=True)
    ann, noise = load(tmp_path / 'c')
    assert {lab['kind'] for lab in noise['images']} == {'clean'}
    assert {lab['kind'] for lab in noise['annotations']} == {'clean'}


def test_noise_labels_are_true_of_the_files(heavy_corpus):
    ann, noise = load(heavy_corpus)
    images = {im['id']: im for im in ann['images']}
    caps = {a['id']: a['caption'] for a in ann['annotations']}
    seen = Counter()
    for lab in noise['images']:
        im = images[lab['image_id']]
        path = heavy_corpus / 'images' / im['file_name']
        kind = lab['kind']
        seen[kind] += 1
        if kind == 'corrupt':
            with pytest.raises(Exception):
                with Image.open(path) as x:
                    x.load()
            continue
        with Image.open(path) as x:
            x.load()
            mode, exif = x.mode, x.getexif()
            up = ImageOps.exif_transpose(x)
        if kind == 'low_res':
            assert min(up.size) < 224
        else:
            assert min(up.size) >= 224, (kind, up.size)
        assert (mode not in ('RGB',)) == (kind == 'unusual_mode'), (kind, mode)
        assert (exif.get(0x0112, 1) != 1) == (kind == 'exif_rotated')
        assert up.size == (im['width'], im['height'])
        if kind == 'duplicate':
            src = images[lab['detail']['source_id']]
            assert path.read_bytes() == (heavy_corpus / 'images' / src['file_name']).read_bytes()
        if kind == 'near_duplicate':
            src = images[lab['detail']['source_id']]
            with Image.open(heavy_corpus / 'images' / src['file_name']) as s:
                a, b = np.asarray(s.convert('RGB'), np.float32), np.asarray(up.convert('RGB'), np.float32)
            assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 20
    assert set(seen) == {'clean', *IMAGE_NOISE}
    colors = re.compile(r'\b(' + '|'.join(COLORS) + r')\b')
    for lab in noise['annotations']:
        cap, kind = caps[lab['id']], lab['kind']
        if kind == 'clean':
            assert cap == lab['clean_caption'] and len(cap) > 10
        if kind == 'text_noise':
            assert cap != lab['clean_caption']
        if kind == 'short':
            assert len(cap) <= 10
        if kind == 'mismatch':
            mine = {o['color'] for o in images[lab['image_id']]['objects']}
            assert set(colors.findall(cap.lower())) - mine, cap  # names a colour the image does not have


def test_clean_pixels_show_the_recorded_objects(heavy_corpus):
    "The centre of each recorded object's box has that object's colour (nearest palette colour)."
    ann, noise = load(heavy_corpus)
    kind = {lab['image_id']: lab['kind'] for lab in noise['images']}
    palette = np.array(list(COLORS.values()), np.float32)
    names = list(COLORS)
    checked = 0
    for im in ann['images'][:300]:
        if kind[im['id']] != 'clean':
            continue
        arr = np.asarray(Image.open(heavy_corpus / 'images' / im['file_name']).convert('RGB'), np.float32)
        for o in im['objects']:
            x, y, w, h = o['bbox']
            px = arr[int(y + h / 2), int(x + w / 2)]
            assert names[int(np.argmin(((palette - px) ** 2).sum(1)))] == o['color'], (im['file_name'], o, px)
            checked += 1
    assert checked > 300


def test_loads_with_pycocotools_and_feeds_cocoevalcap(tmp_path, monkeypatch):
    from pycocotools.coco import COCO
    import pycocoevalcap.eval as ev

    run_cli('synth', tmp_path / 'c', '--n-images', 40, '--noise', 'none', '--quiet', check=True)
    coco = COCO(str(tmp_path / 'c' / 'annotations.json'))
    assert len(coco.getImgIds()) == 40 and len(coco.getAnnIds()) == 200
    # hypotheses: each image's first caption, scored against all five references
    res = [{'image_id': i, 'caption': coco.imgToAnns[i][0]['caption']} for i in coco.getImgIds()]
    coco_res = coco.loadRes(res)

    class NoSpice:  # SPICE downloads Stanford CoreNLP at run time, which cannot work offline; the rest is real
        def compute_score(self, gts, res):
            return float('nan'), [float('nan')] * len(gts)

        def method(self):
            return 'SPICE (skipped: needs a download)'

    monkeypatch.setattr(ev, 'Spice', NoSpice)
    e = ev.COCOEvalCap(coco, coco_res)
    e.evaluate()
    for k in ('Bleu_1', 'Bleu_4', 'METEOR', 'ROUGE_L', 'CIDEr'):
        assert 0 < e.eval[k], (k, e.eval)
    assert e.eval['Bleu_1'] > 0.9  # a hypothesis that is one of the references
