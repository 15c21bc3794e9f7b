"""Hostile corpora, one per format, each holding every kind of bad entry found so far, and a seeded fuzz of the COCO
and Karpathy shapes. The invariant, for every corpus: every input entry is accounted for (kept, or rejected with a
rule and a reason), nothing outside the corpus is read, nothing outside OUT_DIR is written, and no error is a
traceback."""

import hashlib
import io
import json
import os
import random
import tarfile

import pytest
from PIL import Image

from conftest import one_line_error, run_cli
from vl_lab.clean import clean_corpus
from vl_lab.core import VLLabError
from vl_lab.data import load_records


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new('RGB', (240, 240), colour).save(buf, 'JPEG', quality=90)
    return buf.getvalue()


GOOD = [
    ('a.jpg', jpeg('red'), 'A red square on a plain background.'),
    ('b.jpg', jpeg('blue'), 'A blue square on a plain background.'),
]
SECRET = jpeg('green')  # the file outside every corpus: it must never be read into a cleaned corpus
OK = 'A green square on a plain background.'  # a caption every rule keeps: only the path can reject its pair


def outside(tmp_path):
    "A secret image outside the corpus folders, and a folder of them (for linked image roots)."
    (tmp_path / 'secret').mkdir(exist_ok=True)
    (tmp_path / 'secret' / 'secret.jpg').write_bytes(SECRET)
    return tmp_path / 'secret'


def images_into(folder, link_to):
    "The good images, plus a link inside the folder that leads to the secret file."
    folder.mkdir(parents=True, exist_ok=True)
    for name, data, _ in GOOD:
        (folder / name).write_bytes(data)
    (folder / 'link.jpg').symlink_to(link_to / 'secret.jpg')


def hostile_coco(root, sec):
    """COCO: ../, absolute and linked paths, an image entry that is a string, captions that are a list and an object,
    a repeated id."""
    images_into(root / 'images', sec)
    ims = [
        {'id': 1, 'file_name': 'a.jpg'},
        {'id': 2, 'file_name': 'b.jpg'},
        {'id': 3, 'file_name': '../../secret/secret.jpg'},
        {'id': 4, 'file_name': str(sec / 'secret.jpg')},
        {'id': 5, 'file_name': 'link.jpg'},
        'not an image entry',
        {'id': 2, 'file_name': 'a.jpg'},
        {'id': 6, 'file_name': ['a.jpg']},
        {'id': [7], 'file_name': 'a.jpg'},
    ]
    anns = [
        {'image_id': 1, 'caption': GOOD[0][2]},
        {'image_id': 2, 'caption': GOOD[1][2]},
        {'image_id': 1, 'caption': ['a', 'list']},
        {'image_id': 2, 'caption': {'text': 'an object'}},
    ]
    anns += [{'image_id': i, 'caption': OK} for i in (3, 4, 5, 6, [7])]
    (root / 'annotations.json').write_text(json.dumps({'images': ims, 'annotations': anns}))
    return root, len(ims), 2


def hostile_karpathy(root, sec):
    """Karpathy: bad paths, an entry that is a number, a sentence that is a string, a filename that is a list, a
    repeated imgid."""
    images_into(root / 'imgs', sec)

    def sent(c):
        return {'raw': c, 'tokens': c.split()}

    ims = [
        {'filepath': 'imgs', 'filename': 'a.jpg', 'imgid': 0, 'sentences': [sent(GOOD[0][2])]},
        {'filepath': 'imgs', 'filename': 'b.jpg', 'imgid': 1, 'sentences': [sent(GOOD[1][2])]},
        {'filepath': 'imgs', 'filename': 'link.jpg', 'imgid': 2, 'sentences': [sent(OK)]},
        {'filename': '../../secret/secret.jpg', 'imgid': 3, 'sentences': [sent(OK)]},
        42,
        {'filepath': 'imgs', 'filename': 'a.jpg', 'imgid': 5, 'sentences': ['a sentence that is a string']},
        {'filepath': 'imgs', 'filename': ['a.jpg'], 'imgid': 6, 'sentences': []},
        {'filepath': 'imgs', 'filename': 'b.jpg', 'imgid': 1, 'sentences': [sent(GOOD[1][2])]},
        {'filepath': 'imgs', 'filename': 'a.jpg', 'imgid': 8, 'sentences': [{'raw': ['a', 'list']}]},
    ]
    (root / 'dataset.json').write_text(json.dumps({'images': ims}))
    return root / 'dataset.json', len(ims), 2


def hostile_csv(root, sec):
    "CSV: bad paths (../, absolute, a link), an empty path, bytes that are not UTF-8."
    images_into(root / 'imgs', sec)
    rows = [
        ('imgs/a.jpg', GOOD[0][2]),
        ('imgs/b.jpg', GOOD[1][2]),
        ('imgs/link.jpg', OK),
        ('../secret/secret.jpg', OK),
        (str(sec / 'secret.jpg'), OK),
        ('', OK),
    ]
    text = 'filepath,title\n' + ''.join(f'{p},"{c}"\n' for p, c in rows)
    (root / 'train.csv').write_bytes(text.encode() + b'imgs/b.jpg,"caf\xe9 au lait"\n')
    return root / 'train.csv', len(rows), 2  # the last line adds a caption to b.jpg: rows grouped by image


def tar_add(tf, name, payload=None, link=None):
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tf.addfile(info)
        return
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def hostile_webdataset(root, sec):
    "WebDataset: a sample of only a link, a sample with no image, JSON nested too deep, JSON that is a list."
    root.mkdir(parents=True)
    with tarfile.open(root / 'shard-000000.tar', 'w') as tf:
        for name, data, cap in GOOD:
            key = name.split('.')[0]
            tar_add(tf, f'{key}.jpg', data)
            tar_add(tf, f'{key}.txt', cap.encode())
        tar_add(tf, 'c.jpg', link=str(sec / 'secret.jpg'))
        tar_add(tf, 'd.txt', b'a caption without its image')
        tar_add(tf, 'e.jpg', jpeg('red'))
        tar_add(tf, 'e.json', b'[' * 50_000 + b']' * 50_000)
        tar_add(tf, 'f.jpg', jpeg('blue'))
        tar_add(tf, 'f.json', b'["a", "list"]')
    return root, 6, 2


def hostile_imagefolder(root, sec):
    "Image folder: a line that is a list, a file_name that is a list, a caption that is an object, bad paths."
    images_into(root, sec)
    lines = [
        {'file_name': 'a.jpg', 'text': GOOD[0][2]},
        {'file_name': 'b.jpg', 'text': GOOD[1][2]},
        ['a', 'list'],
        {'file_name': ['a.jpg'], 'text': OK},
        {'file_name': 'a.jpg', 'caption': {'an': 'object'}},
        {'file_name': 'link.jpg', 'text': OK},
        {'file_name': '../secret/secret.jpg', 'text': OK},
    ]
    (root / 'metadata.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    return root, len(lines), 2


def linked_root_coco(root, sec):
    "COCO whose images/ folder is itself a link to a folder outside the corpus."
    root.mkdir(parents=True)
    (root / 'images').symlink_to(sec, target_is_directory=True)
    (root / 'annotations.json').write_text(
        json.dumps({'images': [{'id': 1, 'file_name': 'secret.jpg'}], 'annotations': [{'image_id': 1, 'caption': OK}]})
    )
    return root, 1, 0


def tree(folder, skip):
    "Every file under `folder` but those under `skip`, with its size and modification time."
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        if os.path.abspath(dirpath).startswith(os.path.abspath(skip)):
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


HOSTILE = [hostile_coco, hostile_karpathy, hostile_csv, hostile_webdataset, hostile_imagefolder, linked_root_coco]


@pytest.mark.parametrize('make', HOSTILE, ids=lambda f: f.__name__)
def test_hostile_corpus_every_entry_accounted_for_nothing_read_or_written_outside(tmp_path, make):
    sec = outside(tmp_path)
    src, n_entries, n_good = make(tmp_path / 'corpus', sec)
    before = tree(tmp_path, tmp_path / 'out')
    try:
        s = clean_corpus(src, tmp_path / 'out', workers=1, progress=False)
    except VLLabError as e:  # a corpus that keeps nothing is an error, once its manifest accounts for every entry
        assert n_good == 0 and 'no usable pair' in str(e), e
        s = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert tree(tmp_path, tmp_path / 'out') == before  # nothing written (or touched) outside OUT_DIR
    rows = [json.loads(x) for x in (tmp_path / 'out' / 'manifest.jsonl').read_text().splitlines()]
    assert sum(r['caption_index'] == 0 for r in rows) == n_entries == s['input_records']  # one first row per entry
    assert s['kept_pairs'] + s['rejected_pairs'] == s['input_pairs'] == len(rows)
    for r in rows:  # a reason per rejection
        assert r['kept'] or (r['rule'] and r['detail']), r
    ann = json.loads((tmp_path / 'out' / 'annotations.json').read_text())
    assert len(ann['images']) == n_good and all(isinstance(a['caption'], str) for a in ann['annotations'])
    secret = hashlib.sha256(SECRET).hexdigest()
    for f in (tmp_path / 'out' / 'images').iterdir():  # the secret file never reached the cleaned corpus
        assert hashlib.sha256(f.read_bytes()).hexdigest() != secret


def test_hostile_rejections_name_their_cause(tmp_path):
    sec = outside(tmp_path)
    src, _, _ = hostile_coco(tmp_path / 'corpus', sec)
    clean_corpus(src, tmp_path / 'out', workers=1, progress=False)
    rows = [json.loads(x) for x in (tmp_path / 'out' / 'manifest.jsonl').read_text().splitlines()]
    rule = {(r['source'], r['caption_before']): r['rule'] for r in rows}
    assert rule[('link.jpg', OK)] == 'unsafe_path'
    assert rule[('images[5]', None)] == 'malformed_entry'
    assert rule[('a.jpg', None)] == 'duplicate_id'
    assert sum(r['rule'] == 'caption_encoding' for r in rows) == 2  # the list and the object
    kept = [r for r in rows if r['kept']]
    # each caption once, not multiplied by the repeated id
    assert sorted(r['caption_before'] for r in kept) == sorted(c for _, _, c in GOOD)


@pytest.mark.parametrize(
    'body, says',
    [
        ('[' * 100_000 + ']' * 100_000, 'JSON nested too deeply'),
        (json.dumps({'images': [], 'annotations': ['a string']}), 'annotations[0] is a string, not an object'),
        (json.dumps({'images': [], 'annotations': [], 'questions': 'a string'}), "'questions' is a string, not a list"),
    ],
)
def test_hostile_annotation_files_are_one_line_errors(tmp_path, body, says):
    (tmp_path / 'raw').mkdir()
    (tmp_path / 'raw' / 'annotations.json').write_text(body)
    line = one_line_error(run_cli('clean', tmp_path / 'raw', tmp_path / 'clean', '--quiet'))
    assert says in line
    assert not (tmp_path / 'clean' / 'manifest.jsonl').exists()


def random_json(rng: random.Random, depth: int = 0):
    "A random JSON value: the shapes a hostile corpus file can take."
    kinds = ['str', 'int', 'float', 'bool', 'null', 'bytes'] + (['list', 'dict'] * 2 if depth < 4 else [])
    k = rng.choice(kinds)
    texts = ['a.jpg', '../x.jpg', '/etc/passwd', '', 'A red circle.', 'images', '\udc80x', 'ü' * 3]
    if k == 'str':
        return rng.choice(texts)
    if k == 'int':
        return rng.choice([0, 1, -1, 2**63, 7])
    if k == 'float':
        return rng.choice([0.5, -1e308, 1e308])
    if k == 'bool':
        return rng.random() < 0.5
    if k == 'null':
        return None
    if k == 'bytes':
        return ''.join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(8)))
    if k == 'list':
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [
        'id',
        'image_id',
        'file_name',
        'caption',
        'images',
        'annotations',
        'questions',
        'split',
        'sentences',
        'raw',
        'filename',
        'filepath',
        'imgid',
        'cocoid',
        'question',
        'answer',
        'x',
    ]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def fuzz_case(rng: random.Random, kind: str):
    "A document in the COCO or Karpathy shape with random values where the entries go, or random bytes."
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))

    def entry():
        return rng.choice(
            [
                random_json(rng),
                {
                    'id': rng.choice([1, 2, 'a', [1]]),
                    'file_name': random_json(rng),
                    'caption': random_json(rng),
                    'image_id': rng.choice([1, 2, None]),
                },
            ]
        )

    if kind == 'coco':
        doc = {
            'images': [entry() for _ in range(rng.randrange(4))],
            'annotations': [entry() for _ in range(rng.randrange(4))],
        }
        if rng.random() < 0.3:
            doc['questions'] = random_json(rng)
    else:
        doc = {
            'images': [
                rng.choice(
                    [entry(), {'filename': random_json(rng), 'sentences': random_json(rng), 'imgid': random_json(rng)}]
                )
                for _ in range(rng.randrange(4))
            ]
        }
    if rng.random() < 0.2:
        doc[rng.choice(list(doc))] = random_json(rng)
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode('utf-8', 'surrogatepass')


@pytest.mark.parametrize('kind', ['coco', 'karpathy'])
def test_fuzzed_annotation_files_never_raise_a_traceback(tmp_path, kind):
    """300 seeded random documents per shape: each loads and cleans with every entry accounted for, or is refused with
    one `VLLabError` line. Any other exception is a traceback a user would see, and fails the test."""
    rng = random.Random(f'fuzz-{kind}')
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'a.jpg').write_bytes(GOOD[0][1])
    outcomes = {'cleaned': 0, 'refused': 0}
    for i in range(300):
        name = 'annotations.json' if kind == 'coco' else 'dataset.json'
        (tmp_path / name).write_bytes(fuzz_case(rng, kind))
        out = tmp_path / f'out{i}'
        try:
            s = clean_corpus(tmp_path / name, out, format=kind, workers=1, progress=False)
        except VLLabError as e:
            assert '\n' not in str(e)
            if 'no usable pair' not in str(e):
                outcomes['refused'] += 1
                continue
            s = json.loads((out / 'summary.json').read_text())  # nothing kept: an error, every entry accounted for
        n = sum(1 for _ in load_records(tmp_path / name, kind))
        assert s['input_records'] == n and s['kept_pairs'] + s['rejected_pairs'] == s['input_pairs']
        outcomes['cleaned'] += 1
    assert outcomes['cleaned'] > 50 and outcomes['refused'] > 20, outcomes  # both paths were exercised
