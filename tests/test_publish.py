"""Published tables carry the right numbers, the HTML page is self-contained and escapes run-derived text."""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import BadInput
from harness.publish import PAPER_TABLE1, publish, publish_main

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboards"
HOSTILE_METHOD = "<script>alert(1)</script>"
HOSTILE_MODEL = '"><img src=x onerror=alert(1)>'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny() -> dict:
    return json.loads((FIXTURES / "tiny.json").read_text())


def by_seed_stats(document: dict, method: str, metric: str) -> tuple[float, float, int]:
    """mean and stderr over seeds computed by hand: sd with n−1, over √k; one seed keeps its own stderr."""
    records = [e["metrics"][metric] for e in document["entries"]
               if e["method"] == method and e["status"] == "complete"]
    values = [r["value"] for r in records]
    k = len(values)
    mean = sum(values) / k
    if k == 1:
        return mean, records[0]["stderr"], k
    variance = sum((v - mean) ** 2 for v in values) / (k - 1)
    return mean, math.sqrt(variance) / math.sqrt(k), k


def csv_rows(path: Path) -> dict[str, dict]:
    with path.open(newline="") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def hostile_leaderboard(tmp_path: Path) -> Path:
    document = tiny()
    for entry in document["entries"]:
        if entry["method"] == "d2o":
            entry["method"] = HOSTILE_METHOD
            entry["provenance"]["base_model"]["id"] = HOSTILE_MODEL
            entry["provenance"]["config"]["note"] = "</pre><script>alert(2)</script>"
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    return publish([FIXTURES / "tiny.json"], tmp_path_factory.mktemp("published"))


def test_all_outputs_are_written(published):
    assert {"markdown", "csv", "html", "plot_tradeoff_tiny", "plot_loss_tiny"} <= set(published)
    for name, path in published.items():
        assert path.is_file() and path.stat().st_size > 0, name
        if name.startswith("plot_"):
            assert path.read_bytes().startswith(PNG_SIGNATURE)
            assert path.stat().st_size > 5_000  # an empty axes alone is smaller


@pytest.mark.parametrize("method, seeds", [("d2o", 3), ("dpo", 2), ("base", 1)])
@pytest.mark.parametrize("metric", ["harmful_rate", "helpful_rate", "cost", "reward"])
def test_csv_holds_mean_and_stderr_over_seeds(published, method, seeds, metric):
    mean, stderr, k = by_seed_stats(tiny(), method, metric)
    row = csv_rows(published["csv"])[method]
    assert k == seeds and int(row["n_seeds"]) == seeds
    assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(row[f"{metric}_stderr"]) == pytest.approx(stderr, rel=1e-12)
    assert int(row[f"{metric}_k"]) == seeds


def test_failed_runs_are_counted_not_averaged(published):
    row = csv_rows(published["csv"])["ga"]
    assert (row["n_seeds"], row["n_failed"], row["harmful_rate_mean"]) == ("0", "1", "")
    assert "Failed runs (not averaged): ga (1)." in published["markdown"].read_text()


def test_markdown_shows_numbers_and_bolds_the_best_by_direction(published):
    text = published["markdown"].read_text()
    document = tiny()
    for method in ("d2o", "dpo", "base"):
        for metric in ("harmful_rate", "helpful_rate", "cost", "reward"):
            mean, stderr, _ = by_seed_stats(document, method, metric)
            assert f"{mean:.3f} ± {stderr:.3f}" in text, (method, metric)
    d2o_line = next(line for line in text.splitlines() if line.startswith("| d2o |"))
    base_line = next(line for line in text.splitlines() if line.startswith("| base |"))
    # d2o has the lowest harmful_rate (lower is better) and the highest helpful_rate.
    assert "**0.120 ± 0.012**" in d2o_line and "**0.700 ± 0.023**" in d2o_line
    assert "**" not in base_line
    assert "harmful\\_rate ↓" in text and "helpful\\_rate ↑" in text


def test_best_follows_higher_is_better_not_the_largest_number(tmp_path):
    document = tiny()
    for entry in document["entries"]:
        if entry["method"] == "dpo":
            entry["metrics"]["harmful_rate"]["value"] = 0.01  # now dpo is least harmful
    path = tmp_path / "lb.json"
    path.write_text(json.dumps(document))
    text = publish([path], tmp_path / "out")["markdown"].read_text()
    dpo_line = next(line for line in text.splitlines() if line.startswith("| dpo |"))
    assert dpo_line.split("|")[3].strip().startswith("**0.010")


def test_html_is_self_contained(published):
    page = published["html"].read_text()
    assert re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.IGNORECASE) is None
    assert re.search(r"<link|@import|<iframe", page, re.IGNORECASE) is None
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert page.count("<details>") == 4  # provenance on demand, one per row
    assert "d2o0000000000002" in page  # a config hash from the provenance


def test_html_and_markdown_escape_hostile_names(tmp_path):
    written = publish([hostile_leaderboard(tmp_path)], tmp_path / "out")
    page = written["html"].read_text()
    for raw in (HOSTILE_METHOD, HOSTILE_MODEL, "<script>alert(2)</script>", "<img src=x"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<script>") == 2  # the page's own two scripts, nothing injected
    markdown = written["markdown"].read_text()
    assert HOSTILE_METHOD not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    # The plots survive a name with mathtext characters.
    assert written["plot_tradeoff_tiny"].read_bytes().startswith(PNG_SIGNATURE)


def test_paper_preset_is_shown_beside_the_papers_table1(tmp_path):
    written = publish([FIXTURES / "paper.json"], tmp_path / "out")
    markdown = written["markdown"].read_text()
    assert "| d2o (D²O) | -3.50 ± 0.25 | -4.27 | 55.00 ± 5.00 | 61.82 |" in markdown
    assert "| base (Alpaca (base)) | 1.20 ± 0.30 | 1.36 | — | — |" in markdown
    assert "Findings of EMNLP 2024, Table 1" in markdown and "secondary sources" in markdown
    rows = csv_rows(written["csv"])
    assert float(rows["d2o"]["paper_harmfulness"]) == PAPER_TABLE1["d2o"][1] == -4.27
    assert float(rows["d2o"]["paper_gpt4_win_rate_pct"]) == 61.82
    assert float(rows["d2o"]["judge_helpfulness_win_rate_mean"]) == 0.55
    assert float(rows["d2o"]["mmlu_acc_mean"]) == 0.38
    page = written["html"].read_text()
    assert 'id="paper"' in page and "61.82" in page
    # A leaderboard without the paper preset has no paper columns.
    assert "paper_harmfulness" not in publish([FIXTURES / "tiny.json"], tmp_path / "t")["csv"].read_text()


def test_several_leaderboards_merge_and_hyperparameter_settings_stay_apart(tmp_path):
    document = tiny()
    other = copy.deepcopy(next(e for e in document["entries"] if e["run_id"] == "d2o-tiny-s0-aaaa0000"))
    other["run_id"] = "d2o-tiny-s0-beta05"
    other["hyperparameters"]["beta"] = 0.5
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"schema_version": "1.0.0", "entries": [other]}))
    written = publish([FIXTURES / "tiny.json", second], tmp_path / "out")
    methods = csv_rows(written["csv"])
    assert "d2o" in methods and int(methods["d2o"]["n_seeds"]) in (1, 3)
    labels = [line.split("|")[1].strip() for line in written["markdown"].read_text().splitlines()
              if line.startswith("| d2o")]
    assert labels == ["d2o (alpha=0.1, beta=0.1, k=4)", "d2o (alpha=0.1, beta=0.5, k=4)"]


def test_publish_main_reports_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": "9.0.0", "entries": []}')
    assert publish_main([str(bad), "--to", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "9.0.0 is newer" in error
    assert publish_main(["--to", str(tmp_path / "out")]) == 2
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "index.html").is_file()
    conflicting = tiny()
    conflicting["entries"][0]["metrics"]["cost"]["higher_is_better"] = True
    path = tmp_path / "conflict.json"
    path.write_text(json.dumps(conflicting))
    with pytest.raises(BadInput, match="metric 'cost' is higher-is-better in some entries"):
        publish([path], tmp_path / "c")


# --------------------------------------------------------------------------- headless browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        # A normal load takes about a second; an alert() from injected markup blocks the page.
        pytest.fail(f"chromium hung on {args[-1]} (a JS dialog opened by injected markup?)")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _body_attribute(dom: str, name: str):
    match = re.search(r"<body\b([^>]*)>", dom)
    assert match, "no <body> in the dumped DOM"
    found = re.search(rf'\b{name}="([^"]*)"', match.group(1))
    return None if found is None else found.group(1)


def _method_order(dom: str) -> list[str]:
    tbody = re.search(r'<table id="leaderboard">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[1] for row in re.findall(r"<tr\b.*?</tr>", tbody, re.S)]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_page_renders_sorts_and_keeps_hostile_names_as_text_in_chromium(tmp_path):
    page = publish([hostile_leaderboard(tmp_path)], tmp_path / "out")["html"].resolve()
    url = page.as_uri()
    unsorted = _chromium(tmp_path, "--dump-dom", url)
    hostile_text = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert _body_attribute(unsorted, "data-ready") == "1"
    assert _body_attribute(unsorted, "data-errors") == ""
    assert _method_order(unsorted) == [hostile_text, "base", "dpo", "ga"]  # as published: by name

    dom = _chromium(tmp_path, "--dump-dom", url + "?sort=harmful_rate&dir=desc")
    assert _body_attribute(dom, "data-errors") == ""
    assert _body_attribute(dom, "data-ready") == "1"
    assert _body_attribute(dom, "data-sorted-by") == "harmful_rate:desc"
    # 0.40 > 0.22 > 0.12 and the failed run (no value) last.
    assert _method_order(dom) == ["base", "dpo", hostile_text, "ga"]
    ascending = _chromium(tmp_path, "--dump-dom", url + "?sort=cost")
    assert _method_order(ascending) == [hostile_text, "dpo", "base", "ga"]  # -1.0 < 0.2 < 1.1, empty last
    # The hostile names stayed text: no element came from them.
    assert "<script>alert" not in dom
    assert re.search(r"<[a-z]+\b[^>]*\sonerror\s*=", dom, re.IGNORECASE) is None  # no element has a handler
    images = re.findall(r"<img\b[^>]*>", dom)
    assert len(images) == 2 and all('src="data:image/png;base64,' in img for img in images)
    assert len(re.findall(r"<script\b", dom)) == 2

    shot = tmp_path / "page.png"
    _chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", url)
    from matplotlib import image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800
    rgb = pixels[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.02, f"screenshot looks blank ({non_white:.4f} of pixels drawn)"
    assert rgb.std() > 0.05
