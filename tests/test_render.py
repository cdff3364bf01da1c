"""The real render: one `quarto render` per session (HTML and typst PDF), read the way a reader reads it.

The HTML is loaded in headless Chromium with the network blocked, driven over the DevTools protocol through a pipe
(standard library only): every chart draws marks, nothing logs an error, no request leaves the file, every in-page
link (table of contents, cross-references, citations) resolves. The PDF is read with poppler: page count, every
section, caption and bibliography entry in its text, the key numbers as the analysis computed them, one image per
figure. Without Quarto, Chromium or poppler the tests skip, saying why; under CI (the `CI` variable, which `.ci/run`
sets) they fail instead, so a commit is never green without a render.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_report import ARTICLE, CHART_DIV, EXTERNAL, VEGA_LIBRARY, _figure_labels, article_parts, chunk_options, prose

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "_output" / "report"
BIBLIOGRAPHY = ROOT / "report" / "references.bib"
pytestmark = pytest.mark.slow


def require(tool: str, why: str) -> str:
    """The tool's path; without it a skip, or under CI a failure."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not on PATH: {why}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI renders for real: .ci/run installs it)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def rendered(demo_results):
    """`quarto render -P config:...` of the project (HTML + typst PDF), the kernel importing this checkout; once per
    session."""
    require("quarto", "the real render is not checked here (see README, The report)")
    for tool in ("pdftotext", "pdfinfo", "pdfimages"):
        require(tool, "poppler-utils reads the rendered PDF")
    gitignore = (ROOT / ".gitignore").read_bytes()
    env = {**os.environ, "QUARTO_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    # The config passed as a parameter, as a user renders their own run (README, "The report"): the
    # demo's own file, so the cache the suite filled is the one read; -P goes through papermill.
    command = ["quarto", "render", "-P", f"config:{ROOT / 'configs' / 'demo.toml'}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    html, pdf = OUTPUT / "index.html", OUTPUT / "index.pdf"
    assert html.exists() and pdf.exists(), result.stderr[-2000:]
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    images = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    return {"html_path": html, "html": html.read_text(errors="replace"), "pdf_text": text,
            "pages": int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1)),
            "images": [line.split() for line in images.splitlines()[2:] if line.strip()],
            "log": result.stderr, "gitignore_before": gitignore}


def _letters(text: str) -> str:
    """Letters and digits only: what survives line breaks, hyphenation and typography in extracted PDF text."""
    return "".join(ch for ch in text if ch.isalnum())


def _captions(kind: str) -> list[str]:
    chunks = [s for k, s in article_parts(ARTICLE.read_text()) if k == "chunk"]
    return [chunk_options(s)[f"{kind}-cap"].strip('"') for s in chunks if f"{kind}-cap" in chunk_options(s)]


def _bib_entries() -> dict[str, dict]:
    """{key: {field: value}} of report/references.bib (the fields this test reads: author, year, title)."""
    entries = {}
    for key, body in re.findall(r"@\w+\{([^,\s]+),(.*?)\n\}", BIBLIOGRAPHY.read_text(), re.S):
        entries[key] = {f.lower(): v.strip() for f, v in re.findall(r"(\w+)\s*=\s*\{(.*?)\},?\s*$", body, re.M)}
    return entries


# ---------------------------------------------------------------- the PDF, as text
def test_rendered_pdf_has_every_section_and_caption(rendered):
    text = _letters(rendered["pdf_text"])
    headings = re.findall(r"^#{1,2} ([^{\n]+?)\s*(?:\{[^}]*\})?$", prose(ARTICLE.read_text()), re.M)
    assert len(headings) >= 10
    for heading in headings:
        assert _letters(heading) in text, f"section '{heading}' missing from the PDF"
    for caption in _captions("fig") + _captions("tbl"):
        # Markdown sub/superscripts (C~jac~, 2^16^) come out as plain letters in the text layer.
        assert _letters(caption.replace("~", "").replace("^", ""))[:60] in text, f"caption '{caption[:60]}…' missing"
    assert "?@" not in rendered["pdf_text"], "unresolved cross-reference"
    assert 10 <= rendered["pages"] <= 30, rendered["pages"]


def test_rendered_pdf_shows_every_figure_as_an_image(rendered):
    """Each figure is a PNG in the PDF (typst drops charts it cannot show without saying so)."""
    images = [row for row in rendered["images"] if row[2] == "image"]
    assert len(images) >= len(_figure_labels(ARTICLE.read_text())), rendered["images"]
    for row in images:
        assert int(row[3]) >= 300 and int(row[4]) >= 150, f"a figure image of {row[3]} × {row[4]} px"


def test_rendered_pdf_states_the_results_the_analysis_computed(rendered, demo_results):
    """The verdict, the call's statistics and the sizes, as the analysis formats them, in the PDF's text."""
    from analysis.present import report

    n = report.numbers(demo_results)
    text = _letters(rendered["pdf_text"])
    for section, name in (("verdict", "call"), ("routing", "pearson_r"), ("routing", "r_bound"),
                          ("routing", "contrast_sd"), ("routing", "contrast_bound"), ("methods", "n_kds"),
                          ("routing", "n_pairs"), ("effects", "n_clusters"), ("methods", "checkpoint_sha")):
        value = getattr(getattr(n, section), name)
        assert _letters(str(value)) in text, f"{section}.{name} = {value} not in the PDF"


def test_rendered_pdf_has_the_bibliography(rendered):
    """Every reference of report/references.bib is cited and listed (author and year) in the PDF's references."""
    text = rendered["pdf_text"]
    entries = _bib_entries()
    assert len(entries) >= 8, sorted(entries)
    references = text[text.rindex("References"):]
    for key, fields in entries.items():
        assert f"@{key}" in ARTICLE.read_text(), f"{key} is never cited"
        surname = re.split(r"[ ,]", fields["author"].strip("{}"))[0]
        assert _letters(surname) in _letters(references) and fields["year"] in references, f"{key} not listed"
    assert "???" not in text and not re.search(r"\(@\w", text), "an unresolved citation"


def test_rendered_pdf_has_no_console_noise(rendered):
    text = rendered["pdf_text"]
    for noise in ("Warning", "warnings.warn", "Traceback", "it/s]", "s/it]", "%|", "UserWarning", "INFO:"):
        assert noise not in text, f"'{noise}' leaked into the PDF"


# ---------------------------------------------------------------- the HTML, as a file
def test_rendered_html_has_one_chart_per_figure_and_needs_no_network(rendered):
    page = rendered["html"]
    figures = _figure_labels(ARTICLE.read_text())
    ids = CHART_DIV.findall(page)
    assert len(ids) == len(set(ids)) == len(figures), ids
    for chart_id in ids:
        assert page.count(f"vegaEmbed('#{chart_id}'") == 1, chart_id
    for label in figures:
        # Each chart sits inside its own figure, above that figure's caption.
        start = page.index(f'id="{label}"')
        inside = page[start:page.index("<figcaption", start)]
        assert len(CHART_DIV.findall(inside)) == 1, label
    assert page.count(VEGA_LIBRARY) == 1
    external = EXTERNAL.findall(page)
    assert not external, external[:3]
    assert "Could not fetch resource" not in rendered["log"]


def test_render_leaves_the_checkout_clean(rendered):
    """Quarto appends its ignore lines to .gitignore when they are missing; they are committed, so nothing changes."""
    assert (ROOT / ".gitignore").read_bytes() == rendered["gitignore_before"]


# ---------------------------------------------------------------- the HTML, in a browser
class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe: commands in on fd 3, replies and events out on
    fd 4, each a JSON message ending in NUL. Every request is sent to a dead proxy and every host name resolves to
    nothing, so a page that needs the network shows it as a failed request."""

    def __init__(self, chromium: str, profile: Path):
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        # The browser's ends above fd 9 (bash moves them to 3 and 4; neither can overwrite the other).
        to_browser, from_browser = (self._above(fd, 10) for fd in (to_browser, from_browser))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1024", "about:blank"]
        self.process = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', chromium,
                                         *flags], pass_fds=(to_browser, from_browser),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []

    @staticmethod
    def _above(fd: int, lowest: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
        os.close(fd)
        return moved

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._from_browser, 1 << 20) if ready else b""
            assert chunk, "Chromium did not answer on the DevTools pipe in time"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, wait: float = 120, **params) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + wait
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, wait: float = 120) -> dict:
        deadline = time.monotonic() + wait
        seen = len(self.events)
        while not any(e.get("method") == method for e in self.events[seen:]):
            self.events.append(self._message(deadline))
        return next(e for e in self.events[seen:] if e.get("method") == method)


# Run in the page once it has loaded: waits until every chart container holds an SVG with data marks (Vega draws
# after the load event), then reports the charts, the table of contents and every in-page link.
PAGE_STATE = """
new Promise(resolve => {
  const charts = () => [...document.querySelectorAll('.report-chart')].map(div => ({
    id: div.id, svg: div.querySelectorAll('svg').length,
    marks: div.querySelectorAll('svg g.role-mark > *').length,
    figure: div.closest('[id^="fig-"]') ? div.closest('[id^="fig-"]').id : null}));
  const drawn = () => charts().every(c => c.svg > 0 && c.marks > 0);
  const report = () => resolve(JSON.stringify({
    charts: charts(),
    toc: [...document.querySelectorAll('#TOC a[href^="#"]')].map(a => a.getAttribute('href')),
    files: [...document.querySelectorAll('a[href]')].filter(a => !/^(#|[a-z]+:)/i.test(a.getAttribute('href')))
      .map(a => [a.getAttribute('href'), a.textContent.trim()]),
    links: [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href')).filter(h => h.length > 1),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id)}));
  const start = Date.now();
  const poll = () => (drawn() || Date.now() - start > 60000) ? report() : setTimeout(poll, 100);
  poll();
})
"""


def browse(chromium: str, page: Path) -> dict:
    """`page` as headless Chromium showed it: its charts and links, console messages, exceptions and requests."""
    # Chromium's helper processes may still write to the profile after the browser exits: cleanup is best effort
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = DevTools(chromium, Path(profile))
        try:
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.call(f"{domain}.enable", session)
            browser.call("Page.navigate", session, url=page.as_uri())
            browser.wait_for("Page.loadEventFired")
            state = json.loads(browser.call("Runtime.evaluate", session, expression=PAGE_STATE, awaitPromise=True,
                                            returnByValue=True)["result"]["value"])
        finally:
            browser.close()
    events = browser.events
    state["console"] = [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"]
    state["exceptions"] = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    state["log"] = [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"]
    state["requests"] = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return state


@pytest.fixture(scope="session")
def browsed(rendered):
    """The rendered HTML as headless Chromium showed it."""
    browser = os.environ.get("CHROMIUM", "chromium")  # another Chromium build by name, e.g. google-chrome
    return browse(require(browser, "the rendered HTML is not checked in a browser"), rendered["html_path"])


def test_every_chart_draws_in_the_browser(browsed):
    figures = _figure_labels(ARTICLE.read_text())
    assert [c["figure"] for c in browsed["charts"]] == figures, browsed["charts"]
    for chart in browsed["charts"]:
        assert chart["svg"] >= 1 and chart["marks"] > 0, f"{chart['figure']} drew nothing: {chart}"


def test_the_page_logs_no_error(browsed):
    errors = [c for c in browsed["console"] if c["type"] in ("error", "assert", "warning")]
    assert not errors, [" ".join(str(a.get("value", a.get("description", ""))) for a in c["args"]) for c in errors][:3]
    assert not browsed["exceptions"], browsed["exceptions"][0]["exceptionDetails"].get("text")
    logged = [e for e in browsed["log"] if e["level"] in ("error", "warning")]
    assert not logged, [e["text"] for e in logged][:3]


def test_no_request_leaves_the_file(browsed):
    assert browsed["requests"], "the browser reported no request at all: the page did not load"
    outside = [url for url in browsed["requests"] if not url.startswith(("file:", "data:", "blob:", "about:"))]
    assert not outside, outside[:3]


def test_table_of_contents_and_links_resolve(browsed):
    headings = re.findall(r"^#{1,2} ", prose(ARTICLE.read_text()), re.M)
    assert len(browsed["toc"]) >= len(headings), browsed["toc"]
    ids = set(browsed["ids"])
    missing = sorted({href for href in browsed["toc"] + browsed["links"] if href[1:] not in ids})
    assert not missing, missing[:5]
    assert any(href.startswith("#ref-") for href in browsed["links"]), "no citation links to the references"


def test_other_formats_link_the_pdf_as_pdf(browsed, rendered):
    """Links to files (the PDF under "Other formats") point at files beside the page and say what they are."""
    assert [text for href, text in browsed["files"] if href == "index.pdf"] == ["PDF"], browsed["files"]
    for href, _ in browsed["files"]:
        assert (rendered["html_path"].parent / href).is_file(), href
