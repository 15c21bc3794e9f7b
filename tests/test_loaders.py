"""The five corpus formats, built here at test time, load the same pairs."""

import hashlib
import io
import json
import tarfile

import pytest

from conftest import scene_image
from vl_lab.core import VLLabError
from vl_lab.data import detect_format, load_records

N = 6


@pytest.fixture(scope='module')
def pairs():
    out = []
    for i in range(N):
        img, caps = scene_image(100 + i)
        buf = io.BytesIO()
        img.save(buf, 'JPEG', quality=90)
        out.append((f'img{i:03d}.jpg', buf.getvalue(), caps))
    return out


def write_all_formats(root, pairs):
    "The same pairs as COCO, Karpathy, CSV, TSV, WebDataset and imagefolder corpora under `root`."
    coco = root / 'coco'
    (coco / 'images').mkdir(parents=True)
    anns = []
    for i, (name, data, caps) in enumerate(pairs):
        (coco / 'images' / name).write_bytes(data)
        anns += [{'id': len(anns) + 1, 'image_id': i + 1, 'caption': c} for c in caps]
    (coco / 'annotations.json').write_text(
        json.dumps(
            {'images': [{'id': i + 1, 'file_name': n} for i, (n, _, _) in enumerate(pairs)], 'annotations': anns}
        )
    )
    kp = root / 'karpathy'
    (kp / 'flickr30k-images').mkdir(parents=True)
    for name, data, _ in pairs:
        (kp / 'flickr30k-images' / name).write_bytes(data)
    (kp / 'dataset_flickr30k.json').write_text(
        json.dumps(
            {
                'dataset': 'flickr30k',
                'images': [
                    {
                        'filepath': 'flickr30k-images',
                        'filename': n,
                        'imgid': i,
                        'split': 'train',
                        'sentences': [{'raw': c, 'tokens': c.split()} for c in caps],
                    }
                    for i, (n, _, caps) in enumerate(pairs)
                ],
            }
        )
    )
    for sep, ext in ((',', 'csv'), ('\t', 'tsv')):
        d = root / ext
        (d / 'imgs').mkdir(parents=True)
        lines = ['filepath' + sep + 'title']
        for name, data, caps in pairs:
            (d / 'imgs' / name).write_bytes(data)
            lines += [f'imgs/{name}{sep}"{c}"' if sep == ',' else f'imgs/{name}{sep}{c}' for c in caps]
        (d / f'train.{ext}').write_text('\n'.join(lines) + '\n')
    wds = root / 'wds'
    wds.mkdir()
    for s in range(2):  # two shards
        with tarfile.open(wds / f'shard-{s:06d}.tar', 'w') as tf:
            for name, data, caps in pairs[s::2]:
                key = name.rsplit('.', 1)[0]
                for member, payload in ((f'{key}.jpg', data), (f'{key}.json', json.dumps({'captions': caps}).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    hf = root / 'imagefolder'
    hf.mkdir()
    with open(hf / 'metadata.jsonl', 'w') as f:
        for name, data, caps in pairs:
            (hf / name).write_bytes(data)
            f.write(json.dumps({'file_name': name, 'captions': caps}) + '\n')
    return {
        'coco': coco,
        'karpathy': kp / 'dataset_flickr30k.json',
        'csv': root / 'csv' / 'train.csv',
        'tsv': root / 'tsv' / 'train.tsv',
        'webdataset': wds,
        'imagefolder': hf,
    }


def test_every_format_loads_the_same_pairs(tmp_path, pairs):
    paths = write_all_formats(tmp_path, pairs)
    want = sorted((hashlib.sha256(d).hexdigest(), tuple(c)) for _, d, c in pairs)
    expected_format = {'tsv': 'csv'}
    for name, path in paths.items():
        assert detect_format(path) == expected_format.get(name, name)
        recs = list(load_records(path))
        got = sorted((hashlib.sha256(r.image.read_bytes()).hexdigest(), tuple(r.captions)) for r in recs)
        assert got == want, name
        assert len({r.id for r in recs}) == N
        assert all(r.image.open().size[0] >= 224 for r in recs)


def test_paths_escaping_the_root_are_refused_per_item(tmp_path, pairs):
    paths = write_all_formats(tmp_path, pairs)
    (tmp_path / 'secret.jpg').write_bytes(pairs[0][1])
    d = json.loads((paths['coco'] / 'annotations.json').read_text())
    d['images'][0]['file_name'] = '../../secret.jpg'
    d['images'][1]['file_name'] = str(tmp_path / 'secret.jpg')
    (paths['coco'] / 'annotations.json').write_text(json.dumps(d))
    recs = list(load_records(paths['coco']))
    assert 'escapes the dataset root' in recs[0].image.error and 'absolute' in recs[1].image.error
    with pytest.raises(OSError):
        recs[0].image.read_bytes()
    assert recs[2].image.error is None


def test_undetectable_and_malformed_inputs(tmp_path):
    (tmp_path / 'x.txt').write_text('hello')
    with pytest.raises(VLLabError, match='cannot tell the corpus format'):
        detect_format(tmp_path / 'x.txt')
    (tmp_path / 'a.csv').write_text('pic,words\nx.jpg,a red circle\n')
    with pytest.raises(VLLabError, match='needs an image column'):
        list(load_records(tmp_path / 'a.csv'))
    assert [r.captions for r in load_records(tmp_path / 'a.csv', img_key='pic', caption_key='words')] == [
        ['a red circle']
    ]
