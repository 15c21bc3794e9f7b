"""The report in headless Chromium, driven over the DevTools protocol: no console errors, no request for anything
but the page itself (every figure and thumbnail is embedded), data text shown as text, and a screenshot."""

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from conftest import run_cli
from vl_lab.synthetic import synth, synth_config

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--remote-debugging-port=0',
    'about:blank',
]


class Page:
    "One Chromium tab over the DevTools protocol, recording the page's requests and errors."

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f'--user-data-dir={profile}'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        port_file = profile / 'DevToolsActivePort'
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        tab = next(
            t
            for t in json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10).read())
            if t['type'] == 'page'
        )
        self.ws, self.n, self.events = (
            websocket.create_connection(tab['webSocketDebuggerUrl'], timeout=60, suppress_origin=True),
            0,
            [],
        )
        for domain in ('Page', 'Network', 'Runtime', 'Log'):
            self.call(f'{domain}.enable')

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                return msg.get('result', {})
            self.events.append(msg)

    def load(self, url):
        self.call('Page.navigate', url=url)
        while not any(e.get('method') == 'Page.loadEventFired' for e in self.events):
            self.events.append(json.loads(self.ws.recv()))
        time.sleep(0.5)
        self.call('Runtime.evaluate', expression='1')  # collect what came after the load event

    def requests(self):
        return [e['params']['request']['url'] for e in self.events if e.get('method') == 'Network.requestWillBeSent']

    def errors(self):
        out = [
            e['params']['exceptionDetails'].get('text')
            for e in self.events
            if e.get('method') == 'Runtime.exceptionThrown'
        ]
        out += [
            e['params']['entry']['text']
            for e in self.events
            if e.get('method') == 'Log.entryAdded' and e['params']['entry']['level'] == 'error'
        ]
        out += [
            str(e['params']['args'])
            for e in self.events
            if e.get('method') == 'Runtime.consoleAPICalled' and e['params']['type'] in ('error', 'assert')
        ]
        return out

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    assert CHROMIUM, 'headless Chromium is needed (apt-get install chromium; .ci/run installs it)'
    d = tmp_path_factory.mktemp('browser')
    synth(d / 'shapes', synth_config('heavy', n_images=60), progress=False)
    ann = json.loads((d / 'shapes' / 'annotations.json').read_text())
    ann['annotations'][0]['caption'] = '<script>alert(1)</script> a red circle'
    (d / 'shapes' / 'annotations.json').write_text(json.dumps(ann))
    run_cli('report', '--data', d / 'shapes', '--out', d / 'reports', cwd=d, check=True)
    page = Page(d / 'profile')
    page.load((d / 'reports' / 'index.html').as_uri())
    yield d, page
    page.close()


def test_no_console_errors_no_requests_and_a_screenshot(report):
    d, page = report
    assert page.errors() == []
    assert [u for u in page.requests() if not u.startswith(('file://', 'data:'))] == []  # nothing from off the page
    shot = page.call('Page.captureScreenshot', format='png', captureBeyondViewport=True)
    (d / 'reports' / 'screenshot.png').write_bytes(base64.b64decode(shot['data']))
    assert (d / 'reports' / 'screenshot.png').stat().st_size > 50_000


def test_a_script_caption_is_text_not_markup(report):
    d, page = report
    n_scripts = page.call('Runtime.evaluate', expression='document.scripts.length', returnByValue=True)['result'][
        'value'
    ]
    shown = page.call(
        'Runtime.evaluate',
        expression="document.body.innerText.includes('<script>alert(1)</script> a red circle')",
        returnByValue=True,
    )['result']['value']
    assert n_scripts == 0 and shown is True
    assert not any(e.get('method') == 'Page.javascriptDialogOpening' for e in page.events)  # alert(1) never ran
