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
from typing import Optional

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


def legacy_interval(document: dict, method: str, metric: str) -> tuple[float, float]:
    """The 95% interval publish shows for legacy records: mean ± t(k−1)·sd/√k, one seed ± 1.96·stderr,
    cut to [0, 1] for a rate (`*_rate`): a proportion's interval never reaches past its bounds."""
    from scipy import stats as scipy_stats

    mean, stderr, k = by_seed_stats(document, method, metric)
    q = scipy_stats.t.ppf(0.975, k - 1) if k > 1 else scipy_stats.norm.ppf(0.975)
    low, high = mean - q * stderr, mean + q * stderr
    if metric.endswith("_rate"):
        low, high = max(low, 0.0), min(high, 1.0)
    return low, high


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
    low, high = legacy_interval(tiny(), method, metric)
    assert (float(row[f"{metric}_ci_low"]), float(row[f"{metric}_ci_high"])) == pytest.approx((low, high), rel=1e-9)


def test_failed_runs_are_counted_not_averaged(published):
    row = csv_rows(published["csv"])["ga"]
    assert (row["n_seeds"], row["n_failed"], row["harmful_rate_mean"]) == ("0", "1", "")
    assert "Failed runs (not averaged): ga (1)." in published["markdown"].read_text()


def test_markdown_shows_numbers_and_bolds_the_best_by_direction(published):
    text = published["markdown"].read_text()
    document = tiny()
    for method in ("d2o", "dpo", "base"):
        for metric in ("harmful_rate", "helpful_rate", "cost", "reward"):
            mean, _, _ = by_seed_stats(document, method, metric)
            low, high = legacy_interval(document, method, metric)
            assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in text, (method, metric)
    d2o_line = next(line for line in text.splitlines() if line.startswith("| d2o |"))
    base_line = next(line for line in text.splitlines() if line.startswith("| base |"))
    # d2o has the lowest harmful_rate (lower is better) and the highest helpful_rate.
    assert "**0.120 [0.070, 0.170]**" in d2o_line and "**0.700 [0.601, 0.799]**" in d2o_line
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


def test_html_fetches_nothing_from_elsewhere_and_its_style_and_script_are_files_written_once(published):
    page = published["html"].read_text()
    folder = published["html"].parent
    assert re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.IGNORECASE) is None
    assert re.search(r"@import|<iframe", page, re.IGNORECASE) is None
    # Every file the page loads lies beside it: its plots, its style and its two scripts.
    loaded = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sorted(loaded) == sorted([p.name for n, p in published.items() if n.startswith("plot_")]
                                    + ["leaderboard.css", "errors.js", "leaderboard.js"])
    assert all((folder / name).is_file() and "/" not in name for name in loaded)
    # Style and script are static files of the package, copied, not inlined per page.
    assert "<style" not in page and re.search(r"<script>[^<]", page) is None and "data:" not in page
    from importlib import resources
    for name in ("leaderboard.css", "errors.js", "leaderboard.js"):
        assert (folder / name).read_bytes() == resources.files("harness.publish").joinpath("static", name).read_bytes()
    assert len(page) < 60_000  # no plot or script inlined
    assert "default-src 'none'" in page  # and the page's policy allows nothing but its own folder
    assert page.count("<details>") == 4  # provenance on demand, one per row
    assert "d2o0000000000002" in page  # a config hash from the provenance


def test_html_and_markdown_escape_hostile_names(tmp_path):
    written = publish([hostile_leaderboard(tmp_path)], tmp_path / "out")
    page = written["html"].read_text()
    for raw in (HOSTILE_METHOD, HOSTILE_MODEL, "<script>alert(2)</script>", "<img src=x"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    scripts = re.findall(r"<script\b[^>]*>", page)  # the page's own two scripts, nothing injected
    assert scripts == ['<script src="errors.js">', '<script src="leaderboard.js">']
    markdown = written["markdown"].read_text()
    assert HOSTILE_METHOD not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    # The plots survive a name with mathtext characters.
    assert written["plot_tradeoff_tiny"].read_bytes().startswith(PNG_SIGNATURE)


def test_paper_preset_is_shown_beside_the_papers_table1(tmp_path):
    written = publish([FIXTURES / "paper.json"], tmp_path / "out")
    markdown = written["markdown"].read_text()
    # One seed each: the recorded stderr gives value ± 1.96·stderr.
    assert "| d2o (D²O) | -3.50 [-3.99, -3.01] | -4.27 | 55.00 [45.20, 64.80] | 61.82 |" in markdown
    assert "| base (Alpaca (base)) | 1.20 [0.61, 1.79] | 1.36 | — | — |" in markdown
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
    assert len(images) == 2 and all(re.search(r'src="[a-z]+-tiny\.png"', img) for img in images)
    assert len(re.findall(r"<script\b", dom)) == 2

    # The committed tiny board (13 methods, 8 metrics) fits a laptop's 1,400 px without scrolling.
    board = Path(__file__).resolve().parents[1] / "leaderboards" / "tiny" / "leaderboard.json"
    wide = publish([board], tmp_path / "tiny")["html"].resolve().as_uri()
    laptop = _chromium(tmp_path, "--window-size=1400,900", "--dump-dom", wide)
    assert _body_attribute(laptop, "data-ready") == "1" and _body_attribute(laptop, "data-errors") == ""
    assert _body_attribute(laptop, "data-table-overflow") == "0"

    shot = tmp_path / "page.png"
    _chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", url)
    from matplotlib import image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800
    rgb = pixels[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.02, f"screenshot looks blank ({non_white:.4f} of pixels drawn)"
    assert rgb.std() > 0.05


# --------------------------------------------------------------------------- per-task data (schema 1.1.0)

from harness import stats  # noqa: E402
from harness.scoring.metrics import mean_metric, rate_metric  # noqa: E402

TASKS = [i // 4 for i in range(64)]  # 16 tasks × 4 prompts


def _flags(rate: float, salt: int) -> list[bool]:
    import numpy as np

    chosen = set(np.random.default_rng(salt).permutation(64)[:round(rate * 64)].tolist())
    return [i in chosen for i in range(64)]


def clustered_tiny() -> dict:
    """The tiny fixture re-recorded per prompt with task ids, as a 1.1.0 pipeline writes it."""
    import numpy as np

    document = tiny()
    document["schema_version"] = "1.1.0"
    for e in document["entries"]:
        if e["status"] != "complete":
            continue
        salt = 100 * e["seed"] + sum(map(ord, e["method"]))
        for name, record in list(e["metrics"].items()):
            if name.endswith("_rate"):
                e["metrics"][name] = rate_metric(_flags(record["value"], salt), record["higher_is_better"], TASKS,
                                                 n_resamples=199)
            else:
                values = record["value"] + np.random.default_rng(salt).normal(0, 0.5, 64)
                e["metrics"][name] = mean_metric(values, record["higher_is_better"], TASKS, n_resamples=199)
    return document


@pytest.fixture(scope="module")
def clustered_published(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    directory = tmp_path_factory.mktemp("clustered")
    document = clustered_tiny()
    path = directory / "leaderboard.json"
    path.write_text(json.dumps(document))
    return document, publish([path], directory / "out")


def _per_cluster(document: dict, method: str, metric: str) -> list[dict]:
    return [e["metrics"][metric]["per_cluster"] for e in document["entries"]
            if e["method"] == method and e["status"] == "complete"]


@pytest.mark.parametrize("method", ["d2o", "dpo", "base"])
@pytest.mark.parametrize("metric, kind", [("harmful_rate", "rate"), ("cost", "mean")])
def test_rows_with_per_task_data_use_the_across_runs_interval(clustered_published, method, metric, kind):
    document, written = clustered_published
    expected = stats.across_runs(_per_cluster(document, method, metric), kind=kind)
    row = csv_rows(written["csv"])[method]
    assert float(row[f"{metric}_mean"]) == pytest.approx(expected.value, rel=1e-12)
    assert float(row[f"{metric}_ci_low"]) == pytest.approx(expected.low, rel=1e-12)
    assert float(row[f"{metric}_ci_high"]) == pytest.approx(expected.high, rel=1e-12)
    assert float(row[f"{metric}_stderr"]) == pytest.approx(expected.stderr, rel=1e-12)
    line = next(x for x in written["markdown"].read_text().splitlines() if x.startswith(f"| {method} |"))
    assert f"{expected.value:.3f} [{expected.low:.3f}, {expected.high:.3f}]" in line


def test_methods_are_paired_with_the_base_policy_on_harm_and_helpfulness(clustered_published):
    document, written = clustered_published
    markdown = written["markdown"].read_text()
    assert "### against the base policy (preset tiny)" in markdown
    rows = csv_rows(written["csv"])
    for method in ("d2o", "dpo"):
        for metric, better_is_lower in (("harmful_rate", True), ("helpful_rate", False)):
            expected = stats.paired_difference_runs(_per_cluster(document, method, metric),
                                                    _per_cluster(document, "base", metric), kind="rate",
                                                    higher_is_better=not better_is_lower)
            row = rows[method]
            assert float(row[f"{metric}_vs_base_delta"]) == pytest.approx(expected.delta)
            assert float(row[f"{metric}_vs_base_ci_low"]) == pytest.approx(expected.low)
            assert float(row[f"{metric}_vs_base_ci_high"]) == pytest.approx(expected.high)
            assert float(row[f"{metric}_vs_base_p_improvement"]) == pytest.approx(expected.poi)
    # d2o: harmful 0.12 vs base 0.40 — clearly less harmful, so P(improvement) > 0.5 and Δ's interval < 0.
    d2o = rows["d2o"]
    assert float(d2o["harmful_rate_vs_base_ci_high"]) < 0 < float(d2o["harmful_rate_vs_base_p_improvement"]) - 0.5
    assert rows["base"]["harmful_rate_vs_base_delta"] == ""
    line = next(x for x in markdown.split("### against the base policy")[1].splitlines() if x.startswith("| d2o |"))
    assert f"{float(d2o['harmful_rate_vs_base_delta']):+.3f} [" in line
    page = written["html"].read_text()
    assert 'class="vs-base"' in page and "P(improvement)" in page


def test_legacy_leaderboards_have_no_paired_section(published):
    assert "against the base policy" not in published["markdown"].read_text()
    assert csv_rows(published["csv"])["d2o"]["harmful_rate_vs_base_delta"] == ""


# --------------------------------------------------------------------------- frontier plots


def study(method: str, *, harm: list[float], helpful: list[float], selected: int = 0, **extra) -> dict:
    trials = [{"number": i, "state": "COMPLETE", "params": {"train.learning_rate": 1e-5 * (i + 1)},
               "validation": {"harmful_rate": {"value": h, "ci_low": max(h - 0.1, 0), "ci_high": min(h + 0.1, 1)},
                              "helpful_rate": {"value": y, "ci_low": max(y - 0.1, 0), "ci_high": min(y + 0.1, 1)}},
               "run_id": f"{method}-trial-{i}"} for i, (h, y) in enumerate(zip(harm, helpful))]
    trials.append({"number": len(trials), "state": "FAIL", "params": {}, "validation": None, "run_id": None})
    document = {
        "method": method, "preset": "tiny", "study_name": f"{method}-study", "storage": "sqlite:///x.db",
        "objectives": {"harm": "harmful_rate", "help": "helpful_rate"},
        "search_space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
        "selection_rule": {"name": "max_helpful_under_harm_cap", "text": "…", "params": {"harm_cap_ratio": 0.5}},
        "base_validation": {"harmful_rate": 0.9, "helpful_rate": 0.98},
        "trials": trials, "pareto_front": [0, 1], "selected_trial": selected,
        "helpful_at_matched_harm": {"harm_level": 0.45, "value": 0.93}, "an_unknown_key": {"kept": True},
    }
    document.update(extra)
    return document


def write_studies(root: Path, *documents: dict) -> Path:
    for index, document in enumerate(documents):
        folder = root / f"study-{index}" / "nested"
        folder.mkdir(parents=True)
        (folder / "study.json").write_text(json.dumps(document))
    return root


def test_frontier_plot_and_table_from_studies(tmp_path):
    studies = write_studies(tmp_path / "studies",
                            study("d2o", harm=[0.2, 0.4, 0.6], helpful=[0.8, 0.9, 0.85], selected=1),
                            study("dpo", harm=[0.3, 0.5], helpful=[0.7, 0.88], selected=0,
                                  helpful_at_matched_harm={"harm_level": 0.45, "value": None}))
    path = tmp_path / "lb.json"
    path.write_text(json.dumps(clustered_tiny()))
    written = publish([path], tmp_path / "out", studies)
    frontier = written["plot_frontier_tiny"]
    assert frontier.name == "frontier-tiny.png" and frontier.read_bytes().startswith(PNG_SIGNATURE)
    assert frontier.stat().st_size > 10_000
    with written["frontier_csv"].open(newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert rows["d2o"]["helpful_at_matched_harm"] == "0.93" and rows["d2o"]["harm_level"] == "0.45"
    assert rows["d2o"]["selected_trial"] == "1" and rows["d2o"]["trials"] == "3"
    assert rows["dpo"]["helpful_at_matched_harm"] == "" and rows["dpo"]["selection_rule"] == "max_helpful_under_harm_cap"
    markdown = written["markdown"].read_text()
    assert "## Helpfulness at matched harm (tuning studies)" in markdown
    assert "| tiny | d2o | d2o-study | max\\_helpful\\_under\\_harm\\_cap | 1 | 3 | 0.450 | 0.930 |" in markdown
    page = written["html"].read_text()
    assert 'id="frontier"' in page and len(re.findall(r"<img\b", page)) == 3  # tradeoff, loss, frontier


def test_publish_main_takes_studies(tmp_path, capsys):
    studies = write_studies(tmp_path / "s", study("d2o", harm=[0.2, 0.4], helpful=[0.8, 0.9]))
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(tmp_path / "out"), "--studies", str(studies)]) == 0
    assert "plot_frontier_tiny:" in capsys.readouterr().out
    assert (tmp_path / "out" / "frontier-tiny.png").is_file()
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(tmp_path / "o2"), "--studies",
                         str(tmp_path / "absent")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such directory" in error
    (tmp_path / "empty").mkdir()
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(tmp_path / "o3"), "--studies",
                         str(tmp_path / "empty")]) == 2
    assert "no study.json under" in capsys.readouterr().err


MALFORMED_STUDIES = {
    "not json": ("{", "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    "not an object": ([1], "expected a study object, got array [1]"),
    "no method": ({"method": None}, "method: expected a non-empty string, got null"),
    "trials not a list": ({"trials": {}}, "trials: expected an array, got object {}"),
    "bad value": ({"trials": [{"number": 0, "state": "COMPLETE",
                               "validation": {"harmful_rate": {"value": "low"}, "helpful_rate": 0.9}}]},
                  'trials[0].validation.harmful_rate.value: expected a number, got string "low"'),
    "unknown front member": ({"pareto_front": [7]}, "pareto_front[0]: number 7 is not a trial number of this study"),
    "unknown selected": ({"selected_trial": 9}, "selected_trial: number 9 is not a trial number of this study"),
    "bad matched harm": ({"helpful_at_matched_harm": {"harm_level": "x"}},
                         'helpful_at_matched_harm.harm_level: expected a number or null, got string "x"'),
    "duplicate trial": ({"trials": [{"number": 0}, {"number": 0}]}, "trials[1].number: duplicate trial number 0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STUDIES))
def test_malformed_study_is_one_line_naming_the_file_and_nothing_is_overwritten(tmp_path, capsys, case):
    change, expected = MALFORMED_STUDIES[case]
    out = tmp_path / "out"
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = tmp_path / "studies" / "d2o"
    folder.mkdir(parents=True)
    if isinstance(change, dict):
        document = study("d2o", harm=[0.2, 0.4], helpful=[0.8, 0.9])
        document.update(change)
        text = json.dumps(document)
    else:
        text = change if isinstance(change, str) else json.dumps(change)
    (folder / "study.json").write_text(text)
    capsys.readouterr()
    assert publish_main([str(FIXTURES / "tiny.json"), "--to", str(out), "--studies", str(tmp_path / "studies")]) == 2
    error = capsys.readouterr().err
    assert error == f"d2o-bench publish: error: {folder / 'study.json'}: {expected}\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _protocol_entry(method: str, seed: int, world: int, per_cluster: dict, base_eval: str) -> dict:
    total = sum(s for s, _ in per_cluster.values())
    n = sum(c for _, c in per_cluster.values())
    record = {"value": total / n, "stderr": 0.1, "n": n, "higher_is_better": True, "kind": "rate",
              "ci_low": 0.0, "ci_high": 1.0, "per_cluster": per_cluster}
    return {"run_id": f"{method}-s{seed}-w{world}", "method": method, "preset": "tiny", "seed": seed,
            "status": "complete", "hyperparameters": {}, "metrics": {"helpful_rate": record},
            "provenance": {"config": {"world": {"seed": world}, "train": {"learning_rate": 1e-4}},
                           "cache_keys": {"base_eval": base_eval}}}


def test_repeated_base_evaluations_count_once_and_worlds_are_the_units():
    """Nine base entries that are three evaluations (one per world, entered once per training
    seed) give the same interval as those three; a method's seeds pool within their world."""
    from harness.publish import aggregate

    worlds = {0: {"a": [3, 4], "b": [2, 4], "c": [4, 4]}, 1: {"a": [1, 4], "b": [3, 4], "c": [2, 4]},
              2: {"a": [4, 4], "b": [4, 4], "c": [0, 4]}}
    nine = [_protocol_entry("base", seed, world, table, f"eval-{world}")
            for world, table in worlds.items() for seed in range(3)]
    three = [_protocol_entry("base", 0, world, table, f"eval-{world}") for world, table in worlds.items()]
    summary_nine = aggregate(nine)["rows"][0]["metrics"]["helpful_rate"]
    summary_three = aggregate(three)["rows"][0]["metrics"]["helpful_rate"]
    assert (summary_nine["low"], summary_nine["high"]) == pytest.approx((summary_three["low"], summary_three["high"]))
    # A method whose three training seeds differ inside each world: worlds, not runs, are units.
    method = [_protocol_entry("d2o", seed, world, {"a": [seed, 4], "b": [1, 4], "c": [2, 4]}, f"d2o-{seed}-{world}")
              for world in range(3) for seed in range(3)]
    row = aggregate(method)["rows"][0]
    assert row["n_runs"] == 9 and row["metrics"]["helpful_rate"]["k"] == 3
    # Method and base on the same three worlds: the difference is paired world by world.
    together = {r["method"]: r for r in aggregate(nine + method)["rows"]}
    assert together["d2o"]["vs_base"]["helpful_rate"].method.endswith("+between-unit-differences")
    one_world_less = [e for e in method if _world_of_entry(e) != 2]
    apart = {r["method"]: r for r in aggregate(nine + one_world_less)["rows"]}
    assert apart["d2o"]["vs_base"]["helpful_rate"].method.endswith("+between-runs")


def test_a_real_presets_default_world_section_does_not_make_its_seeds_one_world():
    """A real preset's config carries the world section's defaults (seed 0) though no world is
    built: its training seeds are the units, and their spread widens the interval."""
    from harness.publish import aggregate

    def real(entries: list[dict]) -> list[dict]:
        for entry in entries:
            entry["preset"] = "real-smollm2"
            entry["provenance"]["config"]["model"] = {"policy": "smollm2", "cost_model": "suite"}
        return entries

    # Three seeds, each answering prompts a-c: seed 0 helps everywhere, seed 2 nowhere.
    seeds = [_protocol_entry("d2o", seed, 0, {k: [4 - 2 * seed, 4] for k in "abc"}, f"d2o-{seed}") for seed in range(3)]
    as_world = aggregate(json.loads(json.dumps(seeds)))["rows"][0]["metrics"]["helpful_rate"]
    as_real = aggregate(real(seeds))["rows"][0]["metrics"]["helpful_rate"]
    assert as_world["k"] == 1 and as_real["k"] == 3
    assert as_real["mean"] == pytest.approx(as_world["mean"])
    assert as_real["high"] - as_real["low"] > as_world["high"] - as_world["low"]


def _world_of_entry(entry: dict) -> int:
    return entry["provenance"]["config"]["world"]["seed"]


def test_ablations_are_listed_apart_and_never_marked_best(tmp_path):
    from harness.publish import aggregate, render_markdown

    rows = [_protocol_entry("npo", 0, 0, {"a": [1, 4]}, "x"), _protocol_entry("d2o-nosample", 0, 0, {"a": [4, 4]}, "y")]
    table = aggregate(rows)
    by_method = {r["method"]: r for r in table["rows"]}
    assert by_method["d2o-nosample"]["headline"] is False and not by_method["d2o-nosample"]["best"]
    text = render_markdown(table)
    assert text.index("ablations") < text.index("| d2o-nosample") and text.index("| npo") < text.index("ablations")
    assert by_method["d2o-nosample"]["label"] == "d2o-nosample (ablation)"


# --------------------------------------------------------------------------- instruments that failed their check

REAL_SMOLLM2 = Path(__file__).resolve().parents[1] / "leaderboards" / "real-smollm2"


def _real_board(tmp_path: Path, *, name: str, reward: bool = False, cost_low: Optional[float] = None,
                refusal_low: Optional[float] = None) -> Path:
    """The committed real-smollm2 leaderboard (its judge's agreement is 0.000 [0.000, 0.047]),
    with a user-named reward model beside the cost model (so that a harm-vs-help plot exists) and,
    where asked, a cost model or refusal rules whose interval is moved below their threshold."""
    document = json.loads((REAL_SMOLLM2 / "leaderboard.json").read_text())
    for entry in document["entries"]:
        validation = entry["sections"]["instruments"]["validation"]
        if reward:
            # A made-up score: no per-task data, which would have to agree with the value.
            record = {k: v for k, v in entry["metrics"]["safe_rate"].items() if k != "per_cluster"}
            entry["metrics"]["reward"] = {**record, "kind": "mean", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
        if cost_low is not None:
            validation["score-models"]["auroc_test"]["ci_low"] = cost_low
        if refusal_low is not None:
            validation["refusal-rules"]["accuracy"]["ci_low"] = refusal_low
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def _table_part(markdown: str) -> str:
    """The preset's main table: its header line up to the first blank line after it."""
    start = markdown.index("| method | n seeds |")
    return markdown[start:markdown.index("\n\n", start)]


def test_an_instrument_that_fails_its_check_is_absent_from_tables_plots_and_named_under_the_table(tmp_path):
    # The judge failed its check (agreement 0.000 [0.000, 0.047], chance 0.25): its win rates are
    # in every entry and in no table, page or CSV; the instrument is named with its figure below.
    board = _real_board(tmp_path, name="judge", reward=True)
    written = publish([board], tmp_path / "judge")
    markdown, page = written["markdown"].read_text(), written["html"].read_text()
    header = written["csv"].read_text().splitlines()[0]
    entries = json.loads(board.read_text())["entries"]
    assert any((e["sections"].get("judge") or {}).get("helpfulness") for e in entries)  # kept in the entries
    for name in ("judge_helpfulness_win_rate", "judge_harmlessness_win_rate"):
        assert name.replace("_", "\\_") not in _table_part(markdown) and name not in header
        assert f'data-col="{name}"' not in page
    table_end = markdown.index(_table_part(markdown)) + len(_table_part(markdown))
    named = markdown.index("- judge failed its check and is not a result: agreement with the HHH human choice "
                           "0.000 \\[0.000, 0.047\\] over 80 pairs")
    assert named > table_end and "judge failed its check and is not a result" in page
    assert "must exceed 0.25" in markdown
    # The instruments that passed stay, and the refusal rules' bias is stated under every table that
    # shows their metrics: the main table, the pairing with the base and the pairing with d2o.
    assert "cost" in header and "harmful_compliance_rate_mean" in header
    assert markdown.count("refusal-rules bias: recall 0.70") == 3 and page.count("refusal-rules bias: recall 0.70") == 3
    assert "plot_tradeoff_real-smollm2" in written  # cost against reward

    # The cost model fails (its AUROC's lower bound 0.600 is under the refusal-rule baseline's
    # 0.645): cost and safe_rate leave the tables, and the harm-vs-help plot, which has no other
    # harm metric here, is not drawn.
    written = publish([_real_board(tmp_path, name="cost", reward=True, cost_low=0.6)], tmp_path / "cost")
    markdown, header = written["markdown"].read_text(), written["csv"].read_text().splitlines()[0]
    assert "cost_mean" not in header and "safe_rate_mean" not in header and "reward_mean" in header
    assert "safe\\_rate" not in _table_part(markdown) and "plot_tradeoff_real-smollm2" not in written
    assert "- score-models failed its check and is not a result: AUROC on held-out human labels 0.844 " \
           "\\[0.600, 0.896\\] against 0.645 for the refusal-rule baseline" in markdown

    # The refusal rules fail: their rates leave the tables and the pairing, and a tuning study that
    # selected on them is left out of the frontier table and plot, named with the reason.
    written = publish([_real_board(tmp_path, name="refusal", refusal_low=0.6)], tmp_path / "refusal",
                      REAL_SMOLLM2 / "studies")
    markdown = written["markdown"].read_text()
    assert "harmful\\_compliance\\_rate" not in _table_part(markdown) and "against the base policy" not in markdown
    assert "plot_frontier_real-smollm2" not in written and "frontier_csv" not in written
    assert markdown.count("is left out: harmful\\_compliance\\_rate comes from refusal-rules, which failed its check "
                          "(accuracy on 105 human refusal labels 0.800 \\[0.600, 0.876\\]") == 5
    assert "refusal-rules bias" not in markdown  # no table shows their rates, so no table needs the caveat


def test_refusal_rule_rates_without_a_check_of_their_own_carry_the_real_suites_bias(tmp_path):
    """Suite custom measures with the same refusal rules but has no refusal labels: its tables
    state the bias the real suite measured, and say where it was measured."""
    document = json.loads((REAL_SMOLLM2 / "leaderboard.json").read_text())
    for entry in document["entries"]:
        entry["sections"].pop("instruments")
        entry["sections"]["judge"] = None
        entry["preset"] = "mine"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(document))
    written = publish([path], tmp_path / "out")
    markdown, page = written["markdown"].read_text(), written["html"].read_text()
    note = ("refusal-rules bias: recall 0.70: the rules miss 30% of human-labelled refusals, so harmful\\_compliance\\_rate "
            "and benign\\_answer\\_rate are biased upward and over\\_refusal\\_rate downward (on pyrit's 105 human refusal "
            "labels, measured by suite real-safety, not on these entries' data).")
    assert markdown.count(note) == 3  # under the main table and under the pairings with the base and with d2o
    assert page.count("not on these entries&#x27; data") == 3
    for entry in document["entries"]:
        entry["metrics"] = {k: v for k, v in entry["metrics"].items() if k in ("cost", "safe_rate")}
    path.write_text(json.dumps(document))
    assert "refusal-rules bias" not in publish([path], tmp_path / "out2")["markdown"].read_text()


def test_every_interval_of_a_bounded_metric_lies_within_its_bounds():
    """The published tiny page showed the base's capability accuracy as 0.979 [0.934, 1.024]: a t
    interval over seeds of legacy records (no per-task data) reached past 1."""
    from harness.publish import aggregate, load_entries, summarise
    from harness.scoring.metrics import bounds_of

    table = aggregate(load_entries([Path(__file__).parent.parent / "leaderboards" / "tiny" / "leaderboard.json"]))
    checked = 0
    for row in table["rows"]:
        for name, summary in row["metrics"].items():
            bounds = bounds_of(name)
            if summary is None or bounds is None or summary["low"] is None:
                continue
            assert bounds[0] <= summary["low"] <= summary["mean"] <= summary["high"] <= bounds[1], (row["label"], name)
            checked += 1
    assert checked > 50
    assert any(name.endswith("_acc") for row in table["rows"] for name in row["metrics"])

    seeds = [{"value": v, "stderr": 0.0, "n": 128, "higher_is_better": True} for v in (1.0, 1.0, 0.9375)]
    accuracy = summarise(seeds, "tiny_world_knowledge_acc")
    assert accuracy["high"] == 1.0 and 0.0 <= accuracy["low"] < accuracy["mean"] < 1.0
    unbounded = summarise(seeds, "reward")  # a score model's number has no bound to cut at
    assert unbounded["high"] > 1.0 and unbounded["low"] == pytest.approx(accuracy["low"])


# --------------------------------------------------------------------------- --against and findings


def test_against_pairs_every_method_with_the_reference_on_the_same_prompts(clustered_published):
    document, written = clustered_published
    with written["differences_csv"].open(newline="") as handle:
        rows = {(r["method"], r["metric"]): r for r in csv.DictReader(handle)}
    assert {r["against"] for r in rows.values()} == {"d2o"} and not any(m == "d2o" for m, _ in rows)
    for method in ("dpo", "base"):
        for metric, higher in (("harmful_rate", False), ("helpful_rate", True), ("cost", False)):
            kind = "rate" if metric.endswith("_rate") else "mean"
            expected = stats.paired_difference_runs(_per_cluster(document, method, metric),
                                                    _per_cluster(document, "d2o", metric), kind=kind,
                                                    higher_is_better=higher)
            row = rows[(method, metric)]
            assert (float(row["delta"]), float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(
                (expected.delta, expected.low, expected.high))
            assert float(row["half_width"]) == pytest.approx((expected.high - expected.low) / 2)
            assert row["resolved"] == str(expected.low > 0 or expected.high < 0)
    markdown = written["markdown"].read_text()
    section = markdown.split("### against d2o (preset tiny)")[1]
    base = rows[("base", "harmful_rate")]
    line = next(x for x in section.splitlines() if x.startswith("| base | harmful\\_rate"))
    assert f"{float(base['delta']):+.3f} [{float(base['ci_low']):+.3f}, {float(base['ci_high']):+.3f}] " \
           f"±{float(base['half_width']):.3f}" in line
    assert "smallest difference from d2o this board could detect" in markdown
    assert 'class="vs-against"' in written["html"].read_text()


def test_against_names_the_reference_and_refuses_an_unknown_method(tmp_path, capsys):
    path = tmp_path / "lb.json"
    path.write_text(json.dumps(clustered_tiny()))
    written = publish([path], tmp_path / "out", against="dpo")
    assert "### against dpo (preset tiny)" in written["markdown"].read_text()
    assert "| d2o | harmful\\_rate" in written["markdown"].read_text().split("### against dpo")[1]
    assert publish_main([str(path), "--to", str(tmp_path / "bad"), "--against", "nope"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--against nope: no row of that method" in error
    assert not (tmp_path / "bad").exists()
    # A legacy board (no per-task data) has nothing to pair: no section, no differences.csv.
    legacy = publish([FIXTURES / "tiny.json"], tmp_path / "legacy")
    assert "differences_csv" not in legacy and "### against" not in legacy["markdown"].read_text()


FINDINGS = """D2O's harm is {{ d2o.harmful_rate }} (upper bound {{ d2o.harmful_rate.high }}, {{ d2o.n_seeds }} seeds).
Against DPO: {{diff d2o dpo harmful_rate}}, detectable {{ detectable d2o dpo harmful_rate }};
against the base it is {{ verdict d2o base harmful_rate }}, on helpfulness {{ verdict d2o base helpful_rate }}.
"""


def test_findings_take_every_number_from_the_board(tmp_path):
    from harness.publish import aggregate
    from harness.publish.pooling import format_summary, paired_difference

    document = clustered_tiny()
    path = tmp_path / "leaderboard.json"
    path.write_text(json.dumps(document))
    (tmp_path / "FINDINGS.md.in").write_text(FINDINGS)
    written = publish([path], tmp_path / "published", readme=tmp_path / "README.md")
    readme = written["readme"].read_text()
    rows = {r["method"]: r for r in aggregate(document["entries"])["rows"]}
    harm = rows["d2o"]["metrics"]["harmful_rate"]
    d = paired_difference(rows["d2o"], rows["dpo"], "harmful_rate")
    vs_base = paired_difference(rows["d2o"], rows["base"], "harmful_rate")
    assert vs_base.high < 0  # the fixture's d2o is clearly less harmful than its base
    helpful = paired_difference(rows["d2o"], rows["base"], "helpful_rate")
    helpful_verdict = "not resolved" if helpful.low <= 0 <= helpful.high else ("higher" if helpful.delta > 0 else "lower")
    expected = (f"D2O's harm is {format_summary(harm)} (upper bound {harm['high']:.3f}, 3 seeds).\n"
                f"Against DPO: {d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}], detectable {(d.high - d.low) / 2:.3f};\n"
                f"against the base it is lower, on helpfulness {helpful_verdict}.\n")
    assert "## Findings\n\n" + expected.strip() + "\n" in readme
    assert readme.startswith("<!-- Generated by `d2o-bench publish --readme`")
    assert "![plot_frontier" not in readme and "](published/tradeoff-tiny.png)" in readme
    assert "## Provenance" in readme and "leaderboard.json" in readme


@pytest.mark.parametrize("reference, message", [
    ("{{ d2o.no_such_metric }}", "d2o has no value of 'no_such_metric'"),
    ("{{ nope.harmful_rate }}", "method 'nope' has no row on this board"),
    ("{{ diff d2o dpo }}", "cannot read the reference"),
    ("{{ d2o.harmful_rate.median }}", "unknown field 'median'"),
    ("{{ d2o.harmful_rate", "unbalanced"),
])
def test_a_reference_that_does_not_resolve_names_its_line_and_nothing_is_written(tmp_path, capsys, reference, message):
    path = tmp_path / "leaderboard.json"
    path.write_text(json.dumps(clustered_tiny()))
    (tmp_path / "FINDINGS.md.in").write_text(f"# Findings\n\nfine: {{{{ d2o.harmful_rate }}}}\n{reference}\n")
    assert publish_main([str(path), "--to", str(tmp_path / "published"), "--readme", str(tmp_path / "README.md")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"FINDINGS.md.in:4: " in error and message in error
    assert not (tmp_path / "README.md").exists() and not (tmp_path / "published").exists()


def test_a_difference_without_per_task_data_cannot_be_quoted(tmp_path):
    shutil.copy(FIXTURES / "tiny.json", tmp_path / "leaderboard.json")
    (tmp_path / "FINDINGS.md.in").write_text("{{ diff d2o dpo harmful_rate }}\n")
    with pytest.raises(BadInput, match="cannot be paired"):
        publish([tmp_path / "leaderboard.json"], tmp_path / "published", readme=tmp_path / "README.md")


def test_readme_is_one_presets_page_from_one_board(tmp_path, capsys):
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"schema_version": "1.0.0", "entries": [
        {**copy.deepcopy(tiny()["entries"][0]), "run_id": "other-run", "preset": "other"}]}))
    assert publish_main([str(FIXTURES / "tiny.json"), str(second), "--to", str(tmp_path / "out"),
                         "--readme", str(tmp_path / "README.md")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--readme writes one preset's page from one leaderboard" in error
    assert not (tmp_path / "README.md").exists() and not (tmp_path / "out").exists()
