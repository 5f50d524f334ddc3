"""One self-contained HTML report per run (`write_run_report`: `<workdir>/report.html`) and per
sweep (`write_sweep_report`): the plan, the tables, paired comparisons, E[· | b], the theory beside
the measurement, every figure, the provenance and the command that reruns it, in one file that a
browser opens offline: CSS inline, figures inline as PNG data URIs, no script, no network.

The numbers are not derived again: every cell's text is made by the helpers that print the
terminal tables (`results.mean_text`, `results.difference_text`, `results.format_p`, …), and every
number cell carries the value it shows at full precision, `data-value`, with where it comes from,
`data-path`: a JSON list of keys into summary.json for a run (e.g. ["aggregators", "mean",
"honest_accuracy", "mean"]), [point, metric, statistic] of results.csv for a sweep, [index,
field] of comparisons.csv for a sweep's comparisons (tests/test_report_html.py reads them back in
a browser and compares). The plain-text tables the launchers print are kept beside, in <pre>.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import shlex
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fedjax_robust import evaluation
from fedjax_robust import results
from fedjax_robust import store
from fedjax_robust.report import tables

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;
 max-width:1700px;padding:0 1em;color:#1d1d1f;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
div.scroll{overflow-x:auto;max-width:100%} caption{text-align:left;caption-side:top}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f3f3f6;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.baseline td{background:#f7fbf7;font-style:italic}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.6em;overflow-x:auto;font-size:.8em}
pre.command{white-space:pre-wrap;word-break:break-all;font-size:.9em}
pre.wrap{white-space:pre-wrap}
dl.plan{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}
dl.plan dt{font-weight:600} dl.plan dd{margin:0}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;white-space:pre-wrap;max-width:1100px}
p.note{font-size:.85em;color:#333;margin:.2em 0} p.warn{color:#9a3412;font-weight:600}
.muted{color:#666;font-size:.85em}
"""


def _e(text: Any) -> str:
  return html.escape(str(text), quote=True)


def _value_attr(v: Any) -> str:
  """A number at full precision for data-value: repr of the float ('nan', 'inf' as such)."""
  if v is None:
    return "nan"
  if isinstance(v, (bool, np.bool_)):
    return str(int(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  return repr(float(v))


def _num(text: str, path: Sequence[Any] | None = None, value: Any = None) -> str:
  """A number cell: its shown `text`, and, where it shows one value, `data-path` (where the
  value is) and `data-value` (the value at full precision)."""
  attrs = ""
  if path is not None:
    attrs = (f' data-path="{_e(json.dumps(list(path), ensure_ascii=False))}"'
             f' data-value="{_value_attr(value)}"')
  return f'<td class="num"{attrs}>{_e(text)}</td>'


def _table(header: Sequence[str], rows: Iterable[str], caption: str = "") -> str:
  head = "".join(f"<th>{_e(h)}</th>" for h in header)
  return ("<div class=\"scroll\"><table>"
          + (f"<caption class=\"muted\">{_e(caption)}</caption>" if caption else "")
          + f"<thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _pre(text: str, cls: str = "") -> str:
  if not text:
    return ""
  return (f'<pre class="{cls}">' if cls else "<pre>") + _e(text) + "</pre>"


def _notes(lines: Iterable[str]) -> str:
  out = []
  for line in lines:
    if not line.strip():
      continue
    warn = line.startswith(("WARNING", "FINDING"))
    out.append(f"<p class=\"note{' warn' if warn else ''}\">{_e(line)}</p>")
  return "".join(out)


def _plan(items: Iterable[tuple[str, Any]]) -> str:
  return ("<dl class=\"plan\">" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items
                                          if v not in (None, ""))
          + "</dl>")


def _figure(path: str, caption: str = "") -> str:
  """A PNG inline as a data URI (an SVG inline as it is), with its caption: `caption`, else
  its caption file (`tables.caption_path`) when there is one."""
  if not caption and os.path.exists(tables.caption_path(path)):
    with open(tables.caption_path(path), encoding="utf-8") as fh:
      caption = fh.read().strip()
  name = os.path.basename(path)
  if path.endswith(".svg"):
    with open(path, encoding="utf-8") as fh:
      image = fh.read()
  else:
    with open(path, "rb") as fh:
      data = base64.b64encode(fh.read()).decode("ascii")
    image = f'<img src="data:image/png;base64,{data}" alt="{_e(name)}">'
  return (f"<figure id=\"{_e(name)}\">{image}<figcaption><b>{_e(name)}</b>"
          + (f"\n{_e(caption)}" if caption else "") + "</figcaption></figure>")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for k, v in d.items():
    if isinstance(v, Mapping):
      out += _flatten(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", v if not isinstance(v, (list, tuple)) else
                  ", ".join(map(str, v))))
  return out


def _page(title: str, body: Sequence[str]) -> str:
  generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
          f"<h1>{_e(title)}</h1><p class=\"muted\">Written {generated} by fedjax_robust "
          "(self-contained: no script, no network).</p>" + "\n".join(b for b in body if b)
          + "</body></html>\n")


def _write(path: str, text: str) -> str:
  with open(path + ".tmp", "w", encoding="utf-8") as fh:
    fh.write(text)
  os.replace(path + ".tmp", path)
  return path


def rerun_command(argv: Sequence[str], *, default_config: str, workdir: str,
                  root: str | None = None) -> str:
  """The command that reruns a launcher as it was run: `python`, the script and every flag as
  given (the --config.* overrides kept in order), with the config file named (`default_config`
  when none was given) and --workdir set; paths relative to `root` (the repository) where they
  lie inside it. Shell-quoted."""
  def rel(p: str) -> str:
    if root is None:
      return p
    full = os.path.realpath(p)
    inside = os.path.commonpath([full, os.path.realpath(root)]) == os.path.realpath(root)
    return os.path.relpath(full, root) if inside else p
  script, flags = argv[0], list(argv[1:])
  if not any(a == "--config" or a.startswith("--config=") for a in flags):
    flags.insert(0, f"--config={rel(default_config)}")
  if not any(a == "--workdir" or a.startswith("--workdir=") for a in flags):
    flags.append(f"--workdir={workdir}")
  return shlex.join(["python", rel(script), *flags])


def _provenance_section(provenance: Mapping[str, Any] | None, extra: Sequence[tuple[str, Any]]
                        ) -> str:
  items = _flatten(provenance or {}) + list(extra)
  return "<h2 id=\"provenance\">Provenance</h2>" + _plan(items)


def _command_section(command: str) -> str:
  return ("<h2 id=\"rerun\">Rerun</h2><p>From the repository root (the runs cached in the "
          "workdir are reused; add <code>--recompute</code> to train again):</p>"
          + _pre(command, "command"))


# ---------------------------------------------------------------------------------------------
# A run


def _law_text(cfg: Mapping[str, Any]) -> str:
  """μ_H with its options, as the run's figure title names it."""
  name = cfg["honest_set"]
  options = cfg.get("honest_set_options", {}).get(name, {})
  if name == "worst_case":
    return results._honest_set_name(cfg)  # pylint: disable=protected-access
  opts = results.format_options({k: v for k, v in dict(options).items()
                                 if not isinstance(v, (dict, list)) or k == "p_per_client"},
                                {"num_byzantine": "b"})  # as the run's figure names it
  return f"{name}({opts})" if opts else name


def _run_plan(summary: Mapping[str, Any]) -> str:
  cfg, law = summary["config"], summary["byzantine_count"]
  attack_options = results.format_options(dict(cfg.get("attack_options", {}).get(cfg["attack"],
                                                                                    {})))
  t = cfg["training"]
  exact = (f" (exact {law['exact_mean']:.3f}; P(b > f) exact {law['exact_p_exceeds_f']:.3f})"
           if "exact_mean" in law else "")
  items = [
      ("data", f"{cfg['data']['name']} (partition {cfg['data'].get('partition', '')})"),
      ("model", cfg.get("model")),
      ("clients n", cfg["num_clients"]),
      ("declared f", cfg["f"]),
      ("law of μ_H", _law_text(cfg)
       + (f", draws with {law['condition']}" if law.get("condition", "none") != "none" else "")),
      ("realized b", f"mean {law['mean']:.3f}{exact}; P(b > f) = {law['p_exceeds_f']:.3f}; "
                     f"P(b ≥ n/2) = {law['p_no_honest_majority']:.3f}"),
      ("attack", cfg["attack"] + (f"({attack_options})" if attack_options else "")),
      ("draws S", cfg["num_samples"]),
      ("rounds", f"{t['num_rounds']} (evaluated every {t.get('eval_every', '')})"),
      ("rules", ", ".join(summary["aggregators"])
       + (" and the honest-only baseline" if "honest_only" in summary else "")),
      ("seed", cfg.get("seed")),
  ]
  return "<h2 id=\"plan\">Plan</h2>" + _plan(items)


_PERCENT = dict(percent=True)
_RAW = dict(percent=False)


def _headline_table(summary: Mapping[str, Any]) -> str:
  """The terminal table's columns (results.format_table) as an HTML table, each number cell
  with its summary.json path and value."""
  cfg = summary["config"]
  configured = cfg.get("report", {}).get("interval", "normal")
  aggs = summary["aggregators"]
  holdout = any("honest_holdout_accuracy" in s for s in aggs.values())
  tuned = any("honest_finetuned_holdout_accuracy" in s for s in aggs.values())
  backdoor = any("backdoor_accuracy" in s for s in aggs.values())
  # The terminal table's own cell texts (results.format_table), not derived again here.
  # pylint: disable=protected-access
  est = lambda s, **kw: results._estimate(s, configured=configured, **kw)
  median = results._median
  pct = lambda v: results._pct(v).strip()
  # pylint: enable=protected-access
  header = ["rule", "E[honest loss] [CI]", "median loss [CI]", "E[honest acc %] [CI]",
            "median acc %", "worst acc %", "acc|b=f %", "acc|b≤f %", "acc|b>f %"]
  header += ["held-out acc % [CI]"] * holdout + ["fine-tuned acc % [CI]"] * tuned
  header += ["test acc %", "diverged"] + ["backdoor %"] * backdoor
  entries = [(("aggregators", name), name, s) for name, s in aggs.items()]
  if "honest_only" in summary:
    entries.append((("honest_only",), "(honest only: no Byzantine)", summary["honest_only"]))
  rows = []
  for base, label, s in entries:
    p = lambda *keys: list(base) + list(keys)  # pylint: disable=cell-var-from-loop
    cells = [
        _num(est(s["honest_loss"], **_RAW), p("honest_loss", "mean"), s["honest_loss"]["mean"]),
        _num(median(s["honest_loss"], **_RAW), p("honest_loss", "q50"), s["honest_loss"]["q50"]),
        _num(est(s["honest_accuracy"], **_PERCENT), p("honest_accuracy", "mean"),
             s["honest_accuracy"]["mean"]),
        _num(pct(s["honest_accuracy"]["q50"]), p("honest_accuracy", "q50"),
             s["honest_accuracy"]["q50"]),
        _num(pct(s["honest_accuracy"]["worst"]), p("honest_accuracy", "worst"),
             s["honest_accuracy"]["worst"])]
    for cond in ("b_eq_f", "b_le_f", "b_gt_f"):
      key = f"honest_accuracy_given_{cond}"
      cells.append(_num(pct(s[key]["mean"]), p(key, "mean"), s[key]["mean"]))
    for flag, key in ((holdout, "honest_holdout_accuracy"),
                      (tuned, "honest_finetuned_holdout_accuracy")):
      if flag:
        cells.append(_num(est(s[key], **_PERCENT), p(key, "mean"), s[key]["mean"]) if key in s
                     else _num("n/a"))
    cells.append(_num(pct(s["test_accuracy"]["mean"]), p("test_accuracy", "mean"),
                      s["test_accuracy"]["mean"]))
    diverged = s.get("diverged", {"count": 0})
    cells.append(_num(str(diverged["count"]), p("diverged", "count"), diverged["count"])
                 if "diverged" in s else _num("-"))
    if backdoor:
      cells.append(_num(pct(s["backdoor_accuracy"]["mean"]), p("backdoor_accuracy", "mean"),
                        s["backdoor_accuracy"]["mean"]) if "backdoor_accuracy" in s
                   else _num("-"))
    cls = " class=\"baseline\"" if base == ("honest_only",) else ""
    rows.append(f"<tr{cls}><th>{_e(label)}</th>" + "".join(cells) + "</tr>")
  interval = evaluation.INTERVAL_NAMES[configured]
  caption = (f"Final round. honest loss/acc: in-sample (each honest client's own training data, "
             f"averaged over the honest set S); held-out: each honest client's own held-out "
             f"split; test: the global test set. [CI] of a mean: {interval}; of a median: "
             f"{evaluation.MEDIAN_INTERVAL_NAME}.")
  return ("<h2 id=\"results\">Results</h2>" + _table(header, rows, caption)
          + _notes(results.table_notes(summary))
          + _notes(_table_tail(summary)))


def _table_tail(summary: Mapping[str, Any]) -> list[str]:
  """The lines results.format_table prints after its tables: what was run (S draws of μ_H …)
  and its notes and warnings (diverged draws, excess loss, the round's protocol, DP, …)."""
  lines = results.format_table(dict(summary)).split("\n")
  start = f"S={summary['config']['num_samples']} draws of μ_H="
  at = max((i for i, line in enumerate(lines) if line.startswith(start)), default=len(lines))
  return lines[at:]


def _comparisons_table(summary: Mapping[str, Any]) -> str:
  compared = summary.get("comparisons", [])
  if not compared:
    return ""
  rows = []
  for i, c in enumerate(compared):
    scale, digits = (100.0, 2) if "accuracy" in c["metric"] else (1.0, 4)
    text = results.difference_text(c, scale=scale, digits=digits) + (
        "†" if c.get("heavy_tail") and not c.get("deterministic") else "")
    unpaired = ", ".join(f"{c[k]} {label}" for k, label in (
        ("a_only_infinite", "a diverged"), ("b_only_infinite", "b diverged"),
        ("both_infinite", "both diverged"), ("undefined", "undefined")) if c.get(k))
    path = lambda field: ["comparisons", i, field]  # pylint: disable=cell-var-from-loop
    rows.append(
        f"<tr><th>{_e(c['a'])} − {_e(c['b'])}"
        + ("" if c["same_draws"] else " (different sets)") + f"</th><td>{_e(c['metric'])}"
        + (" (pp)" if scale == 100 else "") + "</td>"
        + _num(text, path("mean"), c["mean"])
        + _num(results.format_p(c["p_value"]), path("p_value"), c["p_value"])
        + _num(results.format_p(c["wilcoxon_p"]), path("wilcoxon_p"), c["wilcoxon_p"])
        + _num(str(c["pairs"]), path("pairs"), c["pairs"]) + f"<td>{_e(unpaired)}</td></tr>")
  header = ["a − b", "metric", "mean difference [paired-t 95% CI]", "p (paired t)",
            "p (Wilcoxon)", "pairs", "unpaired"]
  notes = ["Over the same draws: the mean of the per-draw differences a − b; draws where either "
           "side diverged or is undefined are not paired. † heavy-tailed differences: read the "
           "Wilcoxon p-value."]
  notes += results.report_notes(
      [results.DETERMINISTIC_MARK] if any(c.get("deterministic") for c in compared) else [],
      identical_draws=any(c.get("identical_draws") for c in compared))
  return ("<h2 id=\"comparisons\">Paired comparisons</h2>" + _table(header, rows)
          + _notes(notes))


def _by_b_table(summary: Mapping[str, Any]) -> str:
  aggs = summary["aggregators"]
  accuracy = any(not np.isnan(s["honest_accuracy"]["mean"]) for s in aggs.values())
  metric = "honest_accuracy" if accuracy else "honest_loss"
  values = sorted({row["b"] for s in aggs.values() for row in s["by_b"]})
  draws = {row["b"]: row["draws"] for row in next(iter(aggs.values()))["by_b"]}
  entries = [(("aggregators", name), name, s) for name, s in aggs.items()]
  if "honest_only" in summary:
    entries.append((("honest_only",), "(honest only: no Byzantine)", summary["honest_only"]))
  rows = []
  for base, label, s in entries:
    at = {row["b"]: i for i, row in enumerate(s["by_b"])}
    cells = []
    for b in values:
      if b not in at:
        cells.append(_num("-"))
        continue
      v = s["by_b"][at[b]][metric]["mean"]
      # pylint: disable-next=protected-access
      text = results._pct(v).strip() if accuracy else results._g(v)
      cells.append(_num(text, list(base) + ["by_b", at[b], metric, "mean"], v))
    cls = " class=\"baseline\"" if base == ("honest_only",) else ""
    rows.append(f"<tr{cls}><th>{_e(label)}</th>" + "".join(cells) + "</tr>")
  header = ["rule"] + [f"b={b} ({draws.get(b, 0)} draws)" for b in values]
  name = "honest accuracy %" if accuracy else "honest loss"
  return (f"<h2 id=\"by_b\">E[{name} | b]</h2><p class=\"note\">In-sample, per realized number "
          "of Byzantine clients b, with the number of draws at each b.</p>"
          + _table(header, rows))


def _timings_table(timings: Mapping[str, Any]) -> str:
  if not timings:
    return ""
  rows = [f"<tr><th>{_e(name)}</th>" + _num(f"{t.get('compile_seconds', float('nan')):.1f}")
          + _num(f"{t.get('run_seconds', float('nan')):.1f}")
          + _num(str(t.get("draws_per_chunk", ""))) + "</tr>" for name, t in timings.items()]
  return _table(["rule", "compile s", "run s", "draws per chunk"], rows,
                "Seconds of this run (timings.json; a rule reused from the cache keeps the "
                "seconds of the run that made it).")


def write_run_report(exp, summary: Mapping[str, Any], workdir: str, command: str, *,
                     figures: Sequence[str] = ("honest_accuracy.png",),
                     title: str | None = None) -> str:
  """Writes `workdir/report.html` for a run and returns its path: the plan (from summary.json's
  config), the headline table, the paired comparisons, E[· | b], the theory (as printed), the
  `figures` (names in `workdir`, those present), the provenance with the seconds
  (`results.timings(exp)`, or `workdir/timings.json` when `exp` is None), the whole
  configuration and `command` (`rerun_command`)."""
  if exp is not None:
    timings = results.timings(exp)
  else:
    path = os.path.join(workdir, "timings.json")
    timings = {}
    if os.path.exists(path):
      with open(path) as fh:
        timings = json.load(fh)
  cfg = summary["config"]
  title = title or (f"Run: {cfg['data']['name']}, n={cfg['num_clients']}, f={cfg['f']}, "
                    f"μ_H={_law_text(cfg)}, attack {cfg['attack']}, S={cfg['num_samples']}, "
                    f"{cfg['training']['num_rounds']} rounds")
  theory = results.format_theory(dict(summary))
  paths = [os.path.join(workdir, f) for f in figures]
  body = [
      _run_plan(summary),
      _headline_table(summary),
      _comparisons_table(summary),
      _by_b_table(summary),
      ("<h2 id=\"theory\">Theory beside the measurement</h2>"
       + _pre(theory, "" if "\n" in theory else "wrap")) if theory else "",
      "<h2 id=\"figures\">Figures</h2>" + "".join(_figure(p) for p in paths if os.path.exists(p)),
      _provenance_section(summary.get("provenance"), []),
      _timings_table(timings),
      _command_section(command),
      "<h2 id=\"terminal\">As printed</h2><details><summary>the terminal tables "
      "(results.format_table)</summary>" + _pre(results.format_table(dict(summary)))
      + "</details><details><summary>the whole configuration (summary.json's config)"
      "</summary>" + _pre(json.dumps(cfg, indent=1, ensure_ascii=False)) + "</details>",
  ]
  return _write(os.path.join(workdir, REPORT_NAME), _page(title, body))


# ---------------------------------------------------------------------------------------------
# A sweep


def _sweep_table(rows: Sequence[Mapping[str, Any]], metric: str, interval_name: str) -> str:
  """One row per point: its tags, E[metric | b = f], E[metric | b ≤ f] (each with its CI and
  draws), P(b > f), E[metric | b > f] and E[metric] over all draws with its CI, and the
  diverged draws (as `tables.table`; each number cell with its results.csv point, metric and
  statistic)."""
  stats: dict[str, dict] = {}
  tags_of: dict[str, dict] = {}
  for r in rows:
    stats.setdefault(r["point"], {})[(r["metric"], r["statistic"])] = r["value"]
    tags_of.setdefault(r["point"], {k: v for k, v in r.items()
                                    if k not in ("point", "metric", "statistic", "value")})
  chosen = [p for p, e in stats.items() if (metric, "mean") in e]
  if not chosen:
    return ""
  tags = list(tags_of[chosen[0]])
  percent = "accuracy" in metric
  scale, digits = (100.0, 2) if percent else (1.0, 4)
  conditioned = any((f"{metric}_given_b_eq_f", "mean") in stats[p] for p in chosen)
  columns = ([(f"{metric}_given_b_eq_f", "E[· | b = f] [CI] (draws)", True, True),
              (f"{metric}_given_b_le_f", "E[· | b ≤ f] [CI] (draws)", True, True),
              None,
              (f"{metric}_given_b_gt_f", "E[· | b > f] (draws)", False, True)]
             if conditioned else [])
  columns.append((metric, "E[·] all draws [CI]", True, False))
  out = []
  for pid in chosen:
    e = stats[pid]
    cells = []
    for column in columns:
      if column is None:
        p_gt = e.get(("byzantine_count", "p_exceeds_f"), float("nan"))
        cells.append(_num("n/a" if np.isnan(p_gt) else f"{p_gt:.3f}",
                          [pid, "byzantine_count", "p_exceeds_f"], p_gt))
        continue
      name, _, ci, draws = column
      mean, count = e.get((name, "mean"), float("nan")), e.get((name, "count"), None)
      if count is not None and not count:
        cells.append(_num("n/a (no draw)"))
        continue
      lo, hi = ((e.get((name, "mean_ci_low"), float("nan")), e.get((name, "mean_ci_high"),
                                                                   float("nan")))
                if ci else (float("nan"), float("nan")))
      text = results.mean_text(mean, lo, hi, identical=bool(e.get((name, "identical"))),
                               scale=scale, digits=digits)
      if not ci and text.endswith("[n/a]"):
        text = text[:-len(" [n/a]")]
      if draws and count is not None and text != "n/a":
        text += f" ({int(count)})"
      cells.append(_num(text, [pid, name, "mean"], mean))
    diverged = e.get(("diverged", "count"), 0)
    cells.append(_num(str(int(diverged)), [pid, "diverged", "count"], diverged))
    out.append("<tr>" + "".join(f"<td>{_e(tags_of[pid][t])}</td>" for t in tags)
               + "".join(cells) + f"<td class=\"muted\">{_e(pid)}</td></tr>")
  header = tags + [c[1] if c else "P(b > f)" for c in columns] + ["diverged", "point"]
  unit = " (%)" if percent else ""
  caption = (f"{metric}{unit}: expected values at the worst case's b (b = f: n − f honest) and "
             "with the declared f holding (b ≤ f), P(b > f) beside; apart, given b > f and the "
             f"unconditioned mean over all draws. [CI]: {interval_name or '95% CI'} of the mean; "
             "(draws): draws with that b." if conditioned else
             f"{metric}{unit}: the mean over all draws. [CI]: {interval_name or '95% CI'}.")
  shown = [c for c in out if results.EXACT_MARK in c]
  return _table(header, out, caption) + _notes([results.EXACT_NOTE] if shown else [])


def _sweep_comparisons(compared: Sequence[Mapping[str, Any]], metric: str) -> str:
  chosen = [(i, c) for i, c in enumerate(compared) if c["metric"] == metric]
  if not chosen:
    return ""
  tags = [k for k in chosen[0][1] if k not in tables.COMPARISON_FIELDS and k != "test"]
  scale, digits = (100.0, 2) if "accuracy" in metric else (1.0, 4)
  rows = []
  for i, c in chosen:
    rows.append(
        "<tr>" + "".join(f"<td>{_e(c[t])}</td>" for t in tags)
        + f"<th>{_e(c['a'])} − {_e(c['b'])}" + ("" if c["same_draws"] else " (diff. sets)")
        + "</th>" + _num(results.difference_text(dict(c), scale=scale, digits=digits),
                         [i, "mean"], c["mean"])
        + _num(results.format_p(c["p_value"]), [i, "p_value"], c["p_value"])
        + _num(results.format_p(c["wilcoxon_p"]), [i, "wilcoxon_p"], c["wilcoxon_p"])
        + _num(str(c["pairs"]), [i, "pairs"], c["pairs"]) + "</tr>")
  header = tags + ["a − b", f"mean difference{' (pp)' if scale == 100 else ''} "
                   "[paired 95% CI]", "p (t)", "p (W)", "pairs"]
  notes = results.report_notes(
      [results.DETERMINISTIC_MARK] if any(c.get("deterministic") for _, c in chosen) else [],
      identical_draws=any(c.get("identical_draws") for _, c in chosen))
  return _table(header, rows) + _notes(notes)


def _point_provenance(workdir: str, pids: Sequence[str]) -> tuple[dict | None, list]:
  """The first point's provenance, and how many points' provenance differ from it."""
  first, differ = None, 0
  for pid in pids:
    path = store.config_path(workdir, pid)
    if not os.path.exists(path):
      continue
    prov = store.load_record(path).get("provenance")
    if first is None:
      first = prov
    elif {k: v for k, v in (prov or {}).items() if k != "draws_per_chunk"} != {
        k: v for k, v in first.items() if k != "draws_per_chunk"}:
      differ += 1
  return first, ([("points made by other code or environment than the first", differ)]
                 if differ else [])


def write_sweep_report(config, rows: Sequence[Mapping[str, Any]], workdir: str,
                       figure_paths: Sequence[str], command: str, *,
                       point_ids: Sequence[str] = (), subtitle: str = "",
                       comparisons: Sequence[Mapping[str, Any]] = (),
                       compare_baseline: str | None = None, interval_name: str = "",
                       printed: Sequence[tuple[str, str]] = (), name: str = "",
                       title: str | None = None) -> str:
  """Writes `workdir/report.html` for a sweep and returns its path: the plan (`subtitle`, e.g.
  `sweep.describe`, the grid and the plot's tags), the table of `config.plot.metric` per point
  (`rows`: results.csv's rows of this sweep's points), the paired `comparisons`
  (`tables.paired_comparisons`), every figure of `figure_paths` with its caption file, the
  provenance of the points (points/<id>.json), `printed`: (heading, text) of what the launcher
  printed (its tables, the theory table, a sweep's own report), and `command`; `name` (e.g. the
  config file) goes into the title."""
  plot = config.plot
  metric = plot.metric
  pids = list(dict.fromkeys(point_ids or [r["point"] for r in rows]))
  grid = {k: results.format_value(v) for k, v in dict(config.grid).items()}
  title = title or (f"Sweep{' ' + name if name else ''}: {len(pids)} point(s), {metric} against "
                    f"{plot.x}")
  items = [("what every point ran", subtitle), ("points", len(pids)),
           *[(f"grid.{k}", v) for k, v in grid.items()],
           ("plot", f"x={plot.x}, series={plot.series}, style={plot.style}, metric={metric}")]
  body = ["<h2 id=\"plan\">Plan</h2>" + _plan(items),
          f"<h2 id=\"results\">Results: {_e(metric)}</h2>"
          + _sweep_table([r for r in rows if r["point"] in set(pids)], metric, interval_name)]
  if comparisons:
    against = _e(compare_baseline or "the first")
    body.append(f"<h2 id=\"comparisons\">Paired comparisons ({_e(metric)})</h2><p "
                f"class=\"note\">Each {_e(plot.series)} against {against} at the same other "
                "tags, over the same draws (every metric in comparisons.csv).</p>"
                + _sweep_comparisons(comparisons, metric))
  for heading, text in printed:
    if text:
      body.append(f"<h2>{_e(heading)}</h2>" + _pre(text))
  body.append("<h2 id=\"figures\">Figures</h2>"
              + "".join(_figure(p) for p in figure_paths if os.path.exists(p)
                        and p.endswith((".png", ".svg"))))
  prov, extra = _point_provenance(workdir, pids)
  body.append(_provenance_section(prov, extra))
  body.append(_command_section(command))
  body.append("<h2 id=\"config\">Configuration</h2><details><summary>the sweep config as run"
              "</summary>" + _pre(config.to_json(indent=1) if hasattr(config, "to_json")
                                  else json.dumps(config, indent=1)) + "</details>")
  return _write(os.path.join(workdir, REPORT_NAME), _page(title, body))
