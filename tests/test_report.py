"""report.html and report.png: built from a run folder's files, opened in headless Chromium,
honest about a safeguard fallback, rebuilt identically by `reclip report`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reclip
from reclip.cli.main import main
from reclip.report.inputs import CHANGED_SHOWN, choose_images, strip_length
from reclip.report.png import curves_figure

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                    "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def runs(domain, tmp_path_factory):
    """A tiny-model reclip run whose adapted model is kept, and one whose safeguard falls back."""
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    out = tmp_path_factory.mktemp("runs")
    kept = reclip.ReCLIP(model, workers=0, cache=False).fit(dataset, out=out / "kept")
    with pytest.warns(UserWarning, match="safeguard"):
        fallback = reclip.ReCLIP(model, workers=0, cache=False, safeguard=0.999).fit(dataset, out=out / "fallback")
    assert kept.metrics["safeguard"]["kept"] == "adapted" and fallback.metrics["safeguard"]["kept"] == "zero-shot"
    return {"kept": (out / "kept", kept, dataset), "fallback": (out / "fallback", fallback, dataset)}


class _Page(HTMLParser):
    """The parts of report.html the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.sections, self.thumbs, self.broken, self.h1, self._in_h1 = [], [], 0, "", False
        self.decision, self._in_decision = "", 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "class-section" in a.get("class", ""):
            self.sections.append(a["data-class"])
        if tag == "img" and "thumb" in a.get("class", "").split():
            self.thumbs.append(a["src"])
            self.broken += "broken" in a["class"].split()
        self._in_h1 = tag == "h1" or self._in_h1
        if tag == "div" and a.get("id") == "decision":
            self._in_decision = 1
        elif self._in_decision and tag == "div":
            self._in_decision += 1

    def handle_endtag(self, tag):
        if tag == "h1":
            self._in_h1 = False
        if tag == "div" and self._in_decision:
            self._in_decision -= 1

    def handle_data(self, data):
        if self._in_h1:
            self.h1 += data
        if self._in_decision:
            self.decision += data


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _chromium(html: Path, *mode: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *mode, html.as_uri()],
                              capture_output=True, text=True, timeout=120, cwd=html.parent)


def test_a_run_writes_report_html_from_its_files(runs):
    folder, result, dataset = runs["kept"]
    for name in ("metrics.json", "predictions.csv", "report_inputs.json", "report.png", "report.html"):
        assert (folder / name).is_file(), name
    html = (folder / "report.html").read_text()
    page = _page(html)
    names = [c[0] for c in dataset.classnames]
    assert page.sections == names
    assert "safeguard kept the adapted model" in page.h1
    assert "The safeguard kept the adapted model" in page.decision
    assert result.metrics["safeguard"]["reason"] in page.decision
    # per class: the most confident images first, every shown image embedded
    pred, conf = result.predictions.pred, result.predictions.confidence
    inputs = json.loads((folder / "report_inputs.json").read_text())
    for c in range(len(names)):
        rows = inputs["strips"][str(c)]["most"]
        assert [int(pred[r]) for r in rows] == [c] * len(rows)
        assert torch.all(conf[rows][:-1] >= conf[rows][1:])
        assert len(rows) == min(strip_length(len(names)), int((pred == c).sum()))
    assert len(page.thumbs) >= len(inputs["thumbnails"]) > 0 and all(src.startswith("data:image/") for src in page.thumbs)
    # per-class counts of the chosen output against zero-shot's
    counts = re.findall(r'<tr><td><a href="#class-(\d+)">[^<]*</a></td><td>(\d+)</td>\s*<td>(\d+)</td>', html)
    zs = result.zero_shot.pred
    assert [(int(c), int(n), int(z)) for c, n, z in counts] == [
        (c, int((pred == c).sum()), int((zs == c).sum())) for c in range(len(names))]
    assert "Confusion matrix" in html and 'id="metrics"' in html


def test_changed_images_are_the_ones_whose_prediction_changed(runs):
    folder, result, _ = runs["kept"]
    inputs = json.loads((folder / "report_inputs.json").read_text())
    changed = (result.predictions.pred != result.zero_shot.pred).nonzero().flatten().tolist()
    assert changed, "the tiny run changes some predictions"
    assert set(inputs["changed"]) <= set(changed) and len(inputs["changed"]) == min(len(changed), CHANGED_SHOWN)
    html = (folder / "report.html").read_text()
    assert f"{len(changed)} of {len(result.predictions)} images" in html


def test_fallback_is_stated_in_the_titles_of_report_html_and_report_png(runs):
    folder, result, _ = runs["fallback"]
    metrics = json.loads((folder / "metrics.json").read_text())
    page = _page((folder / "report.html").read_text())
    assert "safeguard fell back to zero-shot" in page.h1
    assert "The safeguard fell back to zero-shot" in page.decision
    figure = curves_figure(metrics)  # what report.png holds
    assert "safeguard fell back to zero-shot" in figure._suptitle.get_text()
    accuracy = figure.axes[0]
    chosen = [line for line in accuracy.get_lines() if line.get_label().startswith("chosen output")]
    assert len(chosen) == 1 and "zero-shot (safeguard fallback)" in chosen[0].get_label()
    assert chosen[0].get_ydata()[0] == pytest.approx(100 * metrics["zero_shot"]["top1"])
    adapted = next(line for line in accuracy.get_lines() if line.get_label().startswith("adapted model"))
    # the adapted curve runs on to the adapted model's final evaluation
    assert adapted.get_ydata()[-1] == pytest.approx(100 * metrics["final_adapted"]["top1"])
    kept_figure = curves_figure(json.loads((runs["kept"][0] / "metrics.json").read_text()))
    assert "fell back" not in kept_figure._suptitle.get_text()


def test_reclip_report_rebuilds_the_same_files(runs, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(runs["kept"][0], folder)
    before = {name: (folder / name).read_bytes() for name in ("report.html", "report.png")}
    for name in before:
        (folder / name).unlink()
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_bytes()
    # identical but for the folder named in the footer
    assert html.replace(str(folder).encode(), b"") == before["report.html"].replace(
        str(runs["kept"][0]).encode(), b"")
    assert (folder / "report.png").read_bytes() == before["report.png"]


def test_report_inputs_of_another_run_are_refused(runs, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(runs["kept"][0], folder)
    rows = (folder / "predictions.csv").read_text().splitlines()
    (folder / "predictions.csv").write_text("\n".join(rows[:-1]) + "\n")  # one image fewer
    assert main(["report", str(folder)]) == 2
    assert "belongs to other predictions" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


def test_choose_images_by_value():
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    conf = torch.tensor([0.5, 0.9, 0.7, 0.6, 0.8, 0.3, 0.4])
    zs = torch.tensor([0, 1, 0, 1, 0, 0, 2])
    strips, changed = choose_images(pred, conf, zs, classes=4)
    length = strip_length(4)
    assert length == 6
    assert strips[0] == {"most": [1, 2, 0, 5], "least": []}
    assert strips[1] == {"most": [4, 3], "least": []} and strips[3] == {"most": [], "least": []}
    assert changed == [1, 4]
    many = torch.arange(30) % 2
    strips, _ = choose_images(many, torch.linspace(0.1, 0.9, 30), None, classes=2)
    assert strips[0]["most"] == [28, 26, 24, 22, 20, 18] and strips[0]["least"] == [0, 2, 4, 6, 8, 10]
    assert strip_length(1000) == 1 and strip_length(40) == 3 and strip_length(20) == 6


def test_predict_and_zeroshot_write_a_report(runs, tmp_path, capsys):
    folder, _, dataset = runs["kept"]
    out = tmp_path / "pred.csv"
    assert main(["predict", "--adapter", str(folder), "--dataset", dataset.spec, "--out", str(out),
                 "--workers", "0", "--no-cache"]) == 0
    page = _page((tmp_path / "pred.report.html").read_text())
    assert page.h1.startswith("reclip predict") and len(page.sections) == len(dataset.classnames)
    assert main(["zeroshot", "--model", "tiny", "--dataset", dataset.spec, "--out", str(tmp_path / "zs"),
                 "--workers", "0", "--no-cache"]) == 0
    page = _page((tmp_path / "zs" / "report.html").read_text())
    assert "Only the reclip mode runs the safeguard" in page.decision and not (tmp_path / "zs" / "report.png").exists()


def test_without_labels_the_report_says_so(make_image_folder, tmp_path):
    folder = make_image_folder(6, size=16)
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(folder), classnames=["red", "green"], transform=model.preprocess)
    reclip.ReCLIP(model, mode="transductive", workers=0, cache=False, k=2).fit(dataset, out=tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "have no labels" in html and "Confusion matrix" not in html
    assert _page(html).sections == ["red", "green"]


@needs_chromium
def test_report_html_renders_in_headless_chromium(runs, tmp_path):
    folder, result, dataset = runs["kept"]
    html = folder / "report.html"
    dom = _chromium(html, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _page(dom.stdout)
    assert page.sections == [c[0] for c in dataset.classnames]  # every class section present
    assert len(page.thumbs) > 0 and page.broken == 0  # each thumbnail decoded (onerror marks a broken one)
    assert "The safeguard kept the adapted model" in page.decision
    shot = tmp_path / "shot.png"
    done = _chromium(html, f"--screenshot={shot}", "--window-size=1200,2000")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


@needs_chromium
def test_chromium_check_catches_a_broken_thumbnail(runs, tmp_path):
    """The check above can fail: a thumbnail that does not decode is flagged in the DOM."""
    source = (runs["kept"][0] / "report.html").read_text()
    first = re.search(r'<img class="thumb" alt="[^"]*" src="(data:image/[a-z]+;base64,[^"]+)"', source).group(1)
    broken = tmp_path / "broken.html"
    broken.write_text(source.replace(first, "data:image/png;base64,bm90IGFuIGltYWdl", 1))
    page = _page(_chromium(broken, "--dump-dom").stdout)
    assert page.broken >= 1
