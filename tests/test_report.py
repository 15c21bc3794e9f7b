"""The report page: self-contained, escaped, and built from the corpus on disk."""

import json
import re
from html.parser import HTMLParser

from conftest import run_cli


class Tags(HTMLParser):
    "Collects the real tags and their URL-bearing attributes of a page."

    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ('src', 'href', 'action', 'srcset', 'poster', 'data') and v]


def test_report_is_self_contained_and_escaped(tmp_path):
    data = tmp_path / 'shapes'
    run_cli('synth', data, '--n-images', 60, '--noise', 'heavy', '--quiet', check=True)
    ann = json.loads((data / 'annotations.json').read_text())
    ann['annotations'][0]['caption'] = '<script>alert(1)</script> & <img src=x onerror=alert(2)>'
    (data / 'annotations.json').write_text(json.dumps(ann))
    run_cli(
        'report', '--data', data, '--out', tmp_path / 'r', cwd=tmp_path, check=True
    )  # no lab.yaml there: the data card only
    html = (tmp_path / 'r' / 'index.html').read_text()
    assert '&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(2)&gt;' in html
    page = Tags()
    page.feed(html)
    assert 'script' not in page.tags and page.tags.count('img') == html.count('<img ')
    # nothing is fetched: every URL is a data URI or an in-page anchor; no CSS imports or url() to elsewhere
    assert [u for u in page.urls if not u.startswith(('data:', '#'))] == []
    assert '@import' not in html and not re.search(r'url\((?!data:)', html)
    # the counts on the page are the corpus's
    assert '<td>total</td><td>60</td><td>300</td>' in html
    assert html.count('data:image/png;base64,') >= 2 and html.count('data:image/jpeg;base64,') >= 12
