"""The HTML reports (fedjax_robust/report/html.py): one tiny run and one tiny two-point sweep,
each written once (module fixtures), read back as parsed HTML and in a real browser (headless
Debian Chromium through selenium, skipped with the reason where either is missing).

Every number cell of a report carries where its value is (`data-path`) and the value
(`data-value`); the tests compare both the value and the number shown against summary.json
(a run), results.csv and comparisons.csv (a sweep). A screenshot of each report kind is kept in
$FEDJAX_ROBUST_TEST_ARTIFACTS (default: test-artifacts/ at the repository root).
"""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import time

import pytest

from fedjax_robust import experiment
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust import sweep
from fedjax_robust.report import html as html_report
from conftest import config_module
from tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class _Page(html.parser.HTMLParser):
  """A report as the tests read it: the number cells (path, value, text), the images' sources,
  every attribute that could load something, and unbalanced tags."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.cells, self.images, self.links, self.errors, self.tags = [], [], [], [], set()
    self.commands = []
    self._stack, self._cell, self._pre = [], None, None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    self.tags.add(tag)
    if tag not in VOID:
      self._stack.append(tag)
    self.links += [v for k, v in attrs if k in ("src", "href", "srcset", "action", "data",
                                                "poster") and v is not None]
    if tag == "img":
      self.images.append(a.get("src", ""))
    if tag == "td" and "data-path" in a:
      self._cell = [json.loads(a["data-path"]), a["data-value"], ""]
    if tag == "pre" and a.get("class") == "command":
      self._pre = ""

  def handle_endtag(self, tag):
    if tag in VOID:
      return
    if not self._stack or self._stack[-1] != tag:
      self.errors.append(f"</{tag}> closes <{self._stack[-1] if self._stack else None}>")
      return
    self._stack.pop()
    if tag == "td" and self._cell is not None:
      self.cells.append(tuple(self._cell))
      self._cell = None
    if tag == "pre" and self._pre is not None:
      self.commands.append(self._pre)
      self._pre = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell[2] += data
    if self._pre is not None:
      self._pre += data


def parse(path: str) -> _Page:
  page = _Page()
  with open(path, encoding="utf-8") as fh:
    page.feed(fh.read())
  page.close()
  open_tags = page._stack  # pylint: disable=protected-access
  assert not page.errors and not open_tags, (page.errors, open_tags)
  return page


def _same(shown: float, expected: float) -> bool:
  return (math.isnan(shown) and math.isnan(expected)) or shown == expected


def _agrees(text: str, value: float, scale: float) -> bool:
  """The first number of a cell's text is `scale · value` at the precision shown ('n/a' for NaN,
  '<1e-4' for a small p-value)."""
  if math.isnan(value):
    return text.startswith("n/a")
  if text.startswith("<1e-4"):
    return value < 1e-4
  m = re.match(r"[+-]?\d+(?:\.(\d+))?(?:e[+-]?\d+)?", text)
  assert m, text
  decimals = len(m.group(1) or "")
  return abs(float(m.group(0)) - scale * value) <= 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12


def check_run_cells(cells, summary: dict) -> None:
  """Every number cell's value is summary.json's at its path, and its text shows that value
  (accuracies in percent); every rule has its row, every comparison its four numbers."""
  assert cells
  for path, value, text in cells:
    expected = summary
    for key in path:
      expected = expected[key]
    assert _same(float(value), float(expected)), (path, value, expected)
    metric = (summary["comparisons"][path[1]]["metric"] if path[0] == "comparisons"
              and path[2] == "mean" else str(path[-2]))
    scale = 100.0 if "accuracy" in metric else 1.0
    assert _agrees(text.strip(), float(expected), scale), (path, text, expected)
  rules = {p[1] for p, _, _ in cells if p[0] == "aggregators"}
  assert rules == set(summary["aggregators"])
  assert any(p[0] == "honest_only" for p, _, _ in cells) == ("honest_only" in summary)
  assert sum(p[0] == "comparisons" for p, _, _ in cells) == 4 * len(summary.get("comparisons",
                                                                                   []))


def check_sweep_cells(cells, workdir: str, point_ids) -> None:
  """Every number cell of the table is results.csv's (point, metric, statistic), of the
  comparisons comparisons.csv's (row, field); every point has its row."""
  stats = {(r["point"], r["metric"], r["statistic"]): float(r["value"])
           for r in store.read_results(os.path.join(workdir, "results.csv"))}
  with open(os.path.join(workdir, "comparisons.csv"), newline="") as fh:
    compared = list(csv.DictReader(fh))
  assert cells
  for path, value, text in cells:
    if isinstance(path[0], int):
      c = compared[path[0]]
      expected, metric = float(c[path[1]]), c["metric"]
    else:
      expected, metric = stats[tuple(path)], path[1]
    assert _same(float(value), expected), (path, value, expected)
    scale = 100.0 if "accuracy" in metric and path[-1] not in ("count", "p_value",
                                                               "wilcoxon_p", "pairs") else 1.0
    assert _agrees(text.strip(), expected, scale), (path, text, expected)
  assert {p[0] for p, _, _ in cells if isinstance(p[0], str)} == set(point_ids)
  assert sum(isinstance(p[0], int) for p, _, _ in cells) > 0


# ---------------------------------------------------------------------------------------------
# The two reports, written once.


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
  """A tiny run (tests/tiny_config.py: two rules, the honest-only baseline, comparisons) and its
  report: (workdir, report path, command, the experiment)."""
  workdir = str(tmp_path_factory.mktemp("run") / "w")
  config = get_config()
  config.estimators.honest_optimum = True
  exp = experiment.run(config, workdir=workdir, log=lambda _: None)
  summary = results.write_all(exp, workdir)
  command = html_report.rerun_command(
      ["launch/train.py", "--config=tests/tiny_config.py",
       "--config.estimators.honest_optimum=True"],
      default_config=os.path.join(ROOT, "configs", "default.py"), workdir=workdir, root=ROOT)
  return workdir, html_report.write_run_report(exp, summary, workdir, command), command, exp


def _sweep_core():
  return config_module("sweep_core")


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
  """configs/sweep_core.py on the tiny config at two rules, one p, independent μ_H, reported as
  launch/sweep.py reports it: (workdir, report path, point ids, command)."""
  workdir = str(tmp_path_factory.mktemp("sweep") / "w")
  module = _sweep_core()
  base = get_config()
  base.estimators.honest_optimum = True
  c = module.sweep_config(base, aggregators="mean,trimmed_mean", corruption="0.2",
                          metric="honest_accuracy")
  c.grid.mu_h = ("independent",)
  points = module.points(c)
  quiet = lambda _: None  # pylint: disable=unnecessary-lambda-assignment
  rows = sweep.run(c.base, points, workdir, log=quiet, metric=c.plot.metric)
  subtitle = sweep.describe(c.base, points, x=c.plot.x, note=module.plot_note(c))
  paths = sweep.plot(rows, workdir, x=c.plot.x, series=c.plot.series, style=c.plot.style,
                     metric=c.plot.metric, subtitle=subtitle, log=quiet)
  ids = [sweep.point_id(sweep.apply_overrides(c.base, p.overrides)) for p in points]
  compared = sweep.paired_comparisons(rows, workdir, series=c.plot.series, only=ids, log=quiet)
  sweep.write_comparisons(os.path.join(workdir, "comparisons.csv"), compared)
  command = html_report.rerun_command(
      ["launch/sweep.py", "--config.grid.aggregators=mean,trimmed_mean",
       "--config.grid.mu_h=independent"],
      default_config=os.path.join(ROOT, "configs", "sweep_core.py"), workdir=workdir, root=ROOT)
  path = html_report.write_sweep_report(
      c, rows, workdir, paths, command, point_ids=ids, subtitle=subtitle, comparisons=compared,
      printed=[("As printed: the sweep's table", sweep.table(rows, c.plot.metric))])
  return workdir, path, ids, command, paths


# ---------------------------------------------------------------------------------------------
# Read as HTML.


def test_run_report_numbers_are_summary_jsons(run_report):
  workdir, path, _, _ = run_report
  assert path == os.path.join(workdir, "report.html")
  with open(os.path.join(workdir, "summary.json")) as fh:
    summary = json.load(fh)
  check_run_cells(parse(path).cells, summary)


def test_sweep_report_numbers_are_results_csvs(sweep_report):
  workdir, path, ids, _, _ = sweep_report
  check_sweep_cells(parse(path).cells, workdir, ids)


def test_a_changed_number_is_caught(run_report, tmp_path):
  """The check above can fail: a report whose cell shows another value than summary.json's."""
  workdir, path, _, _ = run_report
  with open(path, encoding="utf-8") as fh:
    text = fh.read()
  with open(os.path.join(workdir, "summary.json")) as fh:
    summary = json.load(fh)
  mean = summary["aggregators"]["mean"]["honest_accuracy"]["mean"]
  shown = f"{100 * mean:.2f}"
  cell = f'data-value="{mean!r}">{shown}'
  assert cell in text
  changed = tmp_path / "report.html"
  changed.write_text(text.replace(cell, f'data-value="{mean!r}">{float(shown) + 1:.2f}'),
                     encoding="utf-8")
  with pytest.raises(AssertionError):
    check_run_cells(parse(str(changed)).cells, summary)


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_reports_are_self_contained(kind, run_report, sweep_report):
  """Nothing to fetch: no script, stylesheet link or frame, every src/href a data: URI or a
  fragment, no http(s) address; every figure inline, byte for byte the PNG the run wrote."""
  path = run_report[1] if kind == "run" else sweep_report[1]
  figures = ([os.path.join(run_report[0], "honest_accuracy.png")] if kind == "run"
             else sweep_report[4])
  page = parse(path)
  assert not page.tags & {"script", "link", "iframe", "object", "embed", "base"}
  assert all(v.startswith(("data:", "#")) for v in page.links), page.links
  with open(path, encoding="utf-8") as fh:
    text = fh.read()
  assert "http://" not in text and "https://" not in text and "url(" not in text
  assert len(page.images) == len(figures) > 0
  for src, figure in zip(page.images, figures):
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    with open(figure, "rb") as fh:
      assert base64.b64decode(src[len(prefix):]) == fh.read()


def test_the_rerun_command_is_in_the_report_and_reruns_what_ran(run_report, sweep_report):
  for path, command in ((run_report[1], run_report[2]), (sweep_report[1], sweep_report[3])):
    assert parse(path).commands == [command]
  workdir = run_report[0]
  argv = shlex.split(run_report[2])
  assert argv == ["python", "launch/train.py", "--config=tests/tiny_config.py",
                  "--config.estimators.honest_optimum=True", f"--workdir={workdir}"]
  # No --config: the launcher's default is named; overrides kept in order, quoted for a shell.
  command = html_report.rerun_command(
      [os.path.join(ROOT, "launch", "sweep.py"), "--config.grid.aggregators=mean,nnm+krum",
       "--config.base.data.name=a b", "--workdir=runs/x"],
      default_config=os.path.join(ROOT, "configs", "sweep_core.py"), workdir="ignored",
      root=ROOT)
  assert shlex.split(command) == ["python", "launch/sweep.py", "--config=configs/sweep_core.py",
                                  "--config.grid.aggregators=mean,nnm+krum",
                                  "--config.base.data.name=a b", "--workdir=runs/x"]


def test_run_report_says_what_ran(run_report):
  """The plan names the law, f, attack, S and rounds; the tables' notes and the theory line are
  those the terminal prints."""
  with open(run_report[1], encoding="utf-8") as fh:
    text = fh.read()
  c = get_config()
  for needle in ("fixed_count(b=1)", "<dt>declared f</dt><dd>1</dd>", "alie(z=1)",
                 f"<dt>draws S</dt><dd>{c.num_samples}</dd>",
                 f"<dt>rounds</dt><dd>{c.training.num_rounds} ", "mean, nnm+trimmed_mean",
                 "Paired comparisons", "E[honest accuracy % | b]", "honest_accuracy.png",
                 "Theory: the robust D-GD bounds", "Provenance", "S=4 draws of μ_H=fixed_count"):
    assert needle in text, needle


def test_each_rule_has_one_colour_in_the_runs_figure(run_report):
  """Curve, band and box of a rule share its colour (the box plot was black for every rule)."""
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, _ = results.figure(run_report[3])
  curves, boxes = fig.axes[0], fig.axes[1]
  line_colour = {line.get_label(): colors.to_rgb(line.get_color()) for line in curves.lines}
  names = [t.get_text() for t in boxes.get_yticklabels()]
  faces = [colors.to_rgb(p.get_facecolor()) for p in boxes.patches]
  plt.close(fig)
  assert len(faces) == len(names) == 2 and len(set(faces)) == 2
  assert faces == [line_colour[name] for name in names]


# ---------------------------------------------------------------------------------------------
# In a real browser.


def _artifacts() -> str:
  path = os.environ.get("FEDJAX_ROBUST_TEST_ARTIFACTS") or os.path.join(ROOT, "test-artifacts")
  os.makedirs(path, exist_ok=True)
  return path


@pytest.fixture(scope="module")
def browser():
  """Headless Debian Chromium through its chromedriver (no selenium-manager download)."""
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip("selenium is not installed (pip install -e '.[test]')")
  for binary in (CHROMIUM, CHROMEDRIVER):
    if not os.access(binary, os.X_OK):
      pytest.skip(f"{binary} is missing: apt-get install chromium chromium-driver (.ci/run "
                  "does where it can)")
  profile = tempfile.mkdtemp(prefix="chromium-profile-")
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
               f"--user-data-dir={profile}"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  try:
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


_IMAGES = ("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
           "i.naturalHeight]);")
_CELLS = ("return Array.from(document.querySelectorAll('td[data-path]')).map(td => "
          "[JSON.parse(td.dataset.path), td.dataset.value, td.textContent]);")


def load(driver, path: str) -> tuple[float, list]:
  """Opens `path`; returns (seconds to the load event, the browser's SEVERE log entries)."""
  driver.get_log("browser")  # drop what an earlier page logged
  start = time.perf_counter()
  driver.get("file://" + path)
  seconds = time.perf_counter() - start
  assert driver.execute_script("return document.readyState") == "complete"
  return seconds, [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver, name: str) -> str:
  height = driver.execute_script("return document.documentElement.scrollHeight")
  driver.set_window_size(1400, min(int(height) + 120, 16000))
  path = os.path.join(_artifacts(), name)
  driver.save_screenshot(path)
  driver.set_window_size(1400, 1000)
  return path


def test_run_report_in_a_browser(browser, run_report):
  workdir, path, _, _ = run_report
  _, severe = load(browser, path)
  assert not severe, severe
  images = browser.execute_script(_IMAGES)
  assert images and all(complete and width > 0 and height > 0
                        for complete, width, height in images), images
  with open(os.path.join(workdir, "summary.json")) as fh:
    check_run_cells([tuple(c) for c in browser.execute_script(_CELLS)], json.load(fh))
  assert os.path.getsize(screenshot(browser, "report_run.png")) > 10_000


def test_sweep_report_in_a_browser(browser, sweep_report):
  workdir, path, ids, _, figures = sweep_report
  _, severe = load(browser, path)
  assert not severe, severe
  images = browser.execute_script(_IMAGES)
  assert len(images) == len(figures) and all(c and w > 0 and h > 0 for c, w, h in images)
  check_sweep_cells([tuple(c) for c in browser.execute_script(_CELLS)], workdir, ids)
  assert os.path.getsize(screenshot(browser, "report_sweep.png")) > 10_000


def test_the_browser_checks_can_fail(browser, run_report, tmp_path):
  """A figure that does not decode is seen as such, and so is an error in the page's console."""
  with open(run_report[1], encoding="utf-8") as fh:
    text = fh.read()
  broken = re.sub(r'src="data:image/png;base64,[^"]{200}', 'src="data:image/png;base64,AAAA',
                  text, count=1)
  assert broken != text
  broken = broken.replace("</body>", "<script>console.error('boom')</script></body>")
  page = tmp_path / "broken.html"
  page.write_text(broken, encoding="utf-8")
  _, severe = load(browser, str(page))
  assert any("boom" in e["message"] for e in severe), severe
  assert not all(c and w > 0 for c, w, _ in browser.execute_script(_IMAGES))
