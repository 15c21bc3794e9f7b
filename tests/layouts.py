"""A corpus in the lab's form rewritten into the layouts researchers download, as the tools that make them write them.

`write_layouts(src, dest)` takes a corpus made by `vl-lab synth` and writes the same images and captions as a COCO 2017
folder, a Karpathy Flickr30k split, an open_clip TSV, img2dataset WebDataset shards and a Hugging Face imagefolder: no
lab `split` field, no classes, no questions, no noise labels (only what those layouts carry: COCO's train and val files,
Karpathy's `split`). Used by tests/test_own_data.py and by hand: `python tests/layouts.py SRC DEST`.
"""

import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

LAYOUTS = ('coco2017', 'karpathy', 'tsv', 'webdataset', 'imagefolder')


def _corpus(src: Path):
    "(images, {image id: [captions]}) of a corpus in the lab's form."
    ann = json.loads((src / 'annotations.json').read_text())
    caps = {}
    for a in ann['annotations']:
        caps.setdefault(a['image_id'], []).append(a['caption'])
    return ann['images'], caps


def _karpathy_split(name: str) -> str:
    "Karpathy's files carry a split of their own: here 80/10/10 by a hash of the file name (not the lab's)."
    u = int(hashlib.md5(name.encode()).hexdigest()[:8], 16) / 16**8
    return 'train' if u < 0.8 else 'val' if u < 0.9 else 'test'


def write_coco2017(src: Path, dest: Path) -> Path:
    "annotations/captions_{train,val}2017.json (+ an instances file), train2017/, val2017/: the lab's val+test is val."
    images, caps = _corpus(src)
    (dest / 'annotations').mkdir(parents=True)
    for part in ('train', 'val'):
        (dest / f'{part}2017').mkdir()
        ims, anns = [], []
        for im in images:
            if (im['split'] == 'train') != (part == 'train'):
                continue
            name = f"{im['id']:012d}{Path(im['file_name']).suffix}"
            shutil.copyfile(src / 'images' / im['file_name'], dest / f'{part}2017' / name)
            ims.append(dict(id=im['id'], file_name=name, width=im['width'], height=im['height'], license=1))
            anns += [
                dict(id=len(anns) + 1 + 10**6 * (part == 'val'), image_id=im['id'], caption=c) for c in caps[im['id']]
            ]
        (dest / 'annotations' / f'captions_{part}2017.json').write_text(
            json.dumps(dict(info=dict(description='COCO 2017'), licenses=[], images=ims, annotations=anns))
        )
    (dest / 'annotations' / 'instances_val2017.json').write_text(json.dumps(dict(images=[], annotations=[])))
    return dest


def write_karpathy(src: Path, dest: Path) -> Path:
    "dataset_flickr30k.json beside flickr30k-images/ (the file has its own splits)."
    images, caps = _corpus(src)
    (dest / 'flickr30k-images').mkdir(parents=True)
    entries = []
    for k, im in enumerate(images):
        name = f"{1000000 + im['id']}{Path(im['file_name']).suffix}"
        shutil.copyfile(src / 'images' / im['file_name'], dest / 'flickr30k-images' / name)
        sents = [dict(raw=c, tokens=c.lower().rstrip('.').split(), imgid=k) for c in caps[im['id']]]
        entries.append(dict(filename=name, imgid=k, sentences=sents, split=_karpathy_split(name)))
    (dest / 'dataset_flickr30k.json').write_text(json.dumps(dict(images=entries, dataset='flickr30k')))
    return dest


def write_tsv(src: Path, dest: Path) -> Path:
    "train.csv, tab-separated (open_clip's default --csv-separator), filepath/title, a row per caption."
    images, caps = _corpus(src)
    (dest / 'images').mkdir(parents=True)
    rows = ['filepath\ttitle']
    for im in images:
        shutil.copyfile(src / 'images' / im['file_name'], dest / 'images' / im['file_name'])
        rows += [f"images/{im['file_name']}\t{c}" for c in caps[im['id']]]
    (dest / 'train.csv').write_text('\n'.join(rows) + '\n')
    return dest


def write_webdataset(src: Path, dest: Path, per_shard: int = 256) -> Path:
    "img2dataset's output: 00000.tar, ... of KEY.jpg + KEY.txt + KEY.json, each with its .parquet and _stats.json."
    images, caps = _corpus(src)
    dest.mkdir(parents=True)
    for s in range(0, len(images), per_shard):
        shard = f'{s // per_shard:05d}'
        with tarfile.open(dest / f'{shard}.tar', 'w') as tf:
            for i, im in enumerate(images[s : s + per_shard], start=s):
                key = f'{i:09d}'
                meta = dict(key=key, caption=caps[im['id']][0], status='success', url=f'http://example.invalid/{key}')
                ext = Path(im['file_name']).suffix.lstrip('.')
                parts = (
                    (f'{key}.{ext}', (src / 'images' / im['file_name']).read_bytes()),
                    (f'{key}.txt', caps[im['id']][0].encode()),
                    (f'{key}.json', json.dumps(dict(meta, width=im['width'], height=im['height'])).encode()),
                )
                for member, payload in parts:
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        (dest / f'{shard}.parquet').write_bytes(b'PAR1')
        (dest / f'{shard}_stats.json').write_text(json.dumps(dict(count=min(per_shard, len(images) - s))))
    return dest


def write_imagefolder(src: Path, dest: Path) -> Path:
    "metadata.jsonl (file_name, text: one caption per image, as imagefolder allows) beside the images."
    images, caps = _corpus(src)
    (dest / 'images').mkdir(parents=True)
    with open(dest / 'metadata.jsonl', 'w') as f:
        for im in images:
            shutil.copyfile(src / 'images' / im['file_name'], dest / 'images' / im['file_name'])
            f.write(json.dumps(dict(file_name=f"images/{im['file_name']}", text=caps[im['id']][0])) + '\n')
    return dest


def write_zero_shot_folder(src: Path, dest: Path) -> Path:
    "An ImageNet-style labelled folder (SHAPE/IMAGE) of the corpus's single-object test and val images."
    ann = json.loads((src / 'annotations.json').read_text())
    for im in ann['images']:
        objs = im.get('objects') or []
        if len(objs) == 1 and im['split'] != 'train':
            (dest / objs[0]['shape']).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / 'images' / im['file_name'], dest / objs[0]['shape'] / im['file_name'])
    return dest


WRITERS = dict(
    coco2017=write_coco2017,
    karpathy=write_karpathy,
    tsv=write_tsv,
    webdataset=write_webdataset,
    imagefolder=write_imagefolder,
)


def write_layouts(src, dest, layouts=LAYOUTS) -> dict:
    "{layout: the path a user passes as --data}."
    src, dest = Path(src), Path(dest)
    return {name: WRITERS[name](src, dest / name) for name in layouts}


if __name__ == '__main__':
    for k, v in write_layouts(sys.argv[1], sys.argv[2], sys.argv[3:] or LAYOUTS).items():
        print(k, v)
