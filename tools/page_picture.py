"""The picture of the report page for the README: reports/index.html rendered in headless Chromium into docs/report.png.

    make report && .venv/bin/python tools/page_picture.py [--page reports/index.html] [--out docs/report.png]

The top of the page at --window-size (default 1200x1600). A picture over --max-kb is saved with a palette of 256
colours (Pillow), which keeps text and figures legible at a fraction of the size.
"""

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--hide-scrollbars',
    '--force-device-scale-factor=1',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]


def chromium() -> str:
    "The Chromium executable: /usr/bin/chromium, else the first on PATH."
    candidates = ('/usr/bin/chromium', shutil.which('chromium'), shutil.which('chromium-browser'))
    found = next((c for c in candidates if c and Path(c).exists()), None)
    if not found:
        sys.exit('page_picture: headless Chromium is needed (apt-get install chromium)')
    return found


def screenshot(page: Path, width: int, height: int) -> bytes:
    "PNG bytes of `page` at width x height, from a Chromium with a throw-away profile."
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / 'shot.png'
        cmd = [
            chromium(),
            *FLAGS,
            f'--user-data-dir={Path(tmp) / "profile"}',
            f'--window-size={width},{height}',
            f'--screenshot={shot}',
            page.resolve().as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if not shot.exists():
            sys.exit(f'page_picture: Chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-500:]}')
        return shot.read_bytes()


def smaller(png: bytes, max_bytes: int) -> bytes:
    "`png` as it is when it fits in `max_bytes`, else with a 256-colour palette."
    if len(png) <= max_bytes:
        return png
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert('RGB')
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, format='PNG', optimize=True)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Render the report page into a PNG for the README.')
    p.add_argument('--page', type=Path, default=ROOT / 'reports' / 'index.html', help='the page (made by make report)')
    p.add_argument('--out', type=Path, default=ROOT / 'docs' / 'report.png', help='the PNG to write')
    p.add_argument('--window-size', default='1200,1600', help='WIDTH,HEIGHT in pixels')
    p.add_argument('--max-kb', type=int, default=400, help='above this size, save with a 256-colour palette')
    args = p.parse_args(argv)
    if not args.page.is_file():
        sys.exit(f'page_picture: no page at {args.page} (run `make report` first)')
    width, height = (int(v) for v in args.window_size.split(','))
    png = smaller(screenshot(args.page, width, height), args.max_kb * 1024)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f'{args.out}: {width}x{height}, {len(png) / 1024:.0f} KB')
    return 0


if __name__ == '__main__':
    sys.exit(main())
