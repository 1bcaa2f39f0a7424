"""The HTML reports: self-contained (the rule of edgekit/report/html.py), every device of a fleet
collected from real local devices present, drift highlighted, and rendered by headless
Chromium (Debian's `chromium`, which `make test` installs) without console errors, network
requests or a blank screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.cli import run_edgekit
from helpers.reportfleet import FAILING, HEALTHY, LOW, OFFLINE, SLOW


# -- the self-contained rule, checked independently of the code that writes the page --------

URL_ATTRS = {"src", "href", "xlink:href", "action", "formaction", "poster", "srcset", "background", "data"}
FORBIDDEN_TAGS = {"link", "base", "iframe", "frame", "object", "embed", "script"}
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")\s]*)", re.I)


def _local(value: str) -> bool:
    value = value.strip()
    return value == "" or value.startswith("#") or value.lower().startswith("data:")


class _Loads(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        if tag in FORBIDDEN_TAGS:
            self.found.append(f"<{tag}>")
        if tag == "meta" and any(k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs):
            self.found.append("<meta http-equiv=refresh>")
        for key, value in attrs:
            if key in URL_ATTRS and not _local(value or ""):
                self.found.append(f"{tag} {key}={value!r}")
            if key == "style":
                self._css(value or "", f"{tag} style")
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self._css(data, "<style>")

    def _css(self, text: str, where: str) -> None:
        if "@import" in text.lower():
            self.found.append(f"{where}: @import")
        self.found += [f"{where}: url({u})" for u in CSS_URL.findall(text) if not _local(u)]


def external_loads(page: str) -> list[str]:
    parser = _Loads()
    parser.feed(page)
    return parser.found


def test_the_rule_catches_every_kind_of_external_load():
    bad = ['<img src="https://example.com/a.png">', '<link rel="stylesheet" href="x.css">',
           '<div style="background: url(http://x/y.png)"></div>', "<style>@import 'x.css';</style>",
           '<svg><image xlink:href="//cdn.example/x.png"/></svg>', '<script src="a.js"></script>',
           '<meta http-equiv="refresh" content="0; url=https://x">', '<a href="https://example.com">x</a>']
    for snippet in bad:
        assert external_loads(f"<html><body>{snippet}</body></html>"), snippet
    fine = ('<svg><use xlink:href="#m1"/><g clip-path="url(#p1)"/></svg><img src="data:image/png;base64,AAAA">'
            "<p>see https://example.com in text</p>")
    assert external_loads(fine) == []


# -- headless Chromium ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed and could not be: `make browser` installs Debian's chromium")


def render(chromium: str, page: Path, tmp_path: Path, height: int = 2000) -> dict:
    """Screenshot `page`; {png, console: [messages], requests: [URLs the page asked for]}.
    Every host name resolves to nothing, so a page that tries to load something still fails
    offline, and the attempt shows in the browser's net log."""
    png, netlog, profile = tmp_path / f"{page.stem}.png", tmp_path / f"{page.stem}.netlog.json", tmp_path / "profile"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--log-net-log={netlog}", f"--screenshot={png}", f"--window-size=1200,{height}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert png.is_file(), (proc.returncode, proc.stderr[-3000:])
    console = [m.group(1) for m in re.finditer(r":CONSOLE[:(]?\d*\)?\]\s*(.*)", proc.stderr)]
    return {"png": png, "console": console, "requests": _page_requests(netlog)}


def _page_requests(netlog: Path) -> list[str]:
    text = netlog.read_text()
    try:
        log = json.loads(text)
    except ValueError:  # a log cut at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    return [e["params"]["url"] for e in log["events"]
            if start.get(e["type"]) == "URL_REQUEST_START_JOB"
            and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))
            and not e["params"]["url"].startswith(("file:", "data:"))]


def _colours(png: Path) -> dict:
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 22)
        total = rgb.width * rgb.height
    background = max(colours)[0]
    red = sum(n for n, (r, g, b) in colours if r > 180 and g < 90 and b < 90)
    return {"distinct": len(colours), "not_background": 1 - background / total, "red": red}


def test_the_browser_checks_catch_errors_and_loads(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="https://example.com/x.png">'
                    "<script>undefinedFunction()</script></body></html>")
    seen = render(chromium, page, tmp_path, height=400)
    assert any("Uncaught" in m for m in seen["console"]), seen["console"]
    assert "https://example.com/x.png" in seen["requests"]


# -- the reports ------------------------------------------------------------------------------


def test_fleet_html_shows_every_device_self_contained_and_renders(report_fleet, chromium, tmp_path):
    out = tmp_path / "fleet.html"
    result = run_edgekit("report", "--store", report_fleet.store, "--inventory", report_fleet.inventory, "-o", out)
    assert result.code == 0 and f"wrote {out}" in result.stderr, result.stderr
    page = out.read_text()
    assert external_loads(page) == []
    assert "http://" not in page and "https://" not in page  # not even namespace or DTD URIs
    text = re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    for device in HEALTHY + [FAILING, OFFLINE, LOW, SLOW]:
        assert f">{device}<" in text, device
    device_rows = re.findall(r'<tr class="([a-z]*)"><td class="l">([^<]+)</td>', text)
    assert {d for cls, d in device_rows if cls == "drift"} == {LOW, SLOW}  # highlighted, and no one else
    assert {d for cls, d in device_rows if cls == "failed"} == {FAILING}
    assert page.count("<svg") == 4  # per target: the triangle and the per-device chart
    # what one chart refers to (markers, clip paths) is its own, also when workers drew the charts
    referred = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    ids = [i for i in re.findall(r'\sid="([^"]+)"', page) if i in referred]
    assert referred and len(ids) == len(set(ids)) == len(referred), sorted(i for i in set(ids) if ids.count(i) > 1)[:5]
    assert "5.0 pp below the host" in text and "robust score" in text and "halted" in text
    seen = render(chromium, out, tmp_path)
    assert seen["console"] == [] and seen["requests"] == []
    colours = _colours(seen["png"])
    assert colours["distinct"] > 50 and colours["not_background"] > 0.2 and colours["red"] > 200, colours


def test_calibration_html_marks_the_choice_and_renders(calibration_record, chromium, tmp_path):
    record = json.loads(calibration_record.read_text())
    out = tmp_path / "cal.html"
    result = run_edgekit("report", "--calibration", calibration_record, "--format", "html", "-o", out)
    assert result.code == 0, result.stderr
    page = out.read_text()
    assert external_loads(page) == [] and "http://" not in page and page.count("<svg") == 1
    for c in record["candidates"]:
        assert f">{c['id']}<" in page
    assert re.search(rf'<tr class="chosen">.*?>{re.escape(record["chosen"])}<', page, flags=re.S)
    assert "max_model_mb" in page  # fp32 breaks it
    words = " ".join(re.sub(r"<[^>]+>", " ", page).split())  # the chart's text, its wrapped lines joined
    assert re.search(rf"chosen {re.escape(record['chosen'])} at \d+% of the 0\.1 MiB budget \(dashed\)", words), words
    seen = render(chromium, out, tmp_path, height=1200)
    assert seen["console"] == [] and seen["requests"] == []
    colours = _colours(seen["png"])
    assert colours["distinct"] > 50 and colours["not_background"] > 0.2, colours
