"""Every command that README.md, BUILD.md and the launchers' and configs' docstrings document runs
at a tiny size, exits 0 and writes the files it says it wrote.

The commands are read from the documents (`tests/documented_commands.py`), so a newly
documented command is covered without a new test. The cheap ones run in the default set, the
rest are `slow` (`_is_slow`).
"""

import glob
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest

import documented_commands as docs

ROOT = docs.ROOT
COMMANDS = docs.commands()

def _is_slow(command):
  """Commands on the tiny test config, and the Python one-liners, run in the default set; the
  rest compile the default job's rules, references and theory even at 2 draws × 2 rounds
  (1.5–5 min each on the 2 cores here) and are `slow`."""
  argv = command.argv
  if any("$" in w for w in argv):  # the multi-process recipe
    return True
  return not (argv[1] == "-c" or "--config=tests/tiny_config.py" in argv)


def _param(command):
  marks = [pytest.mark.slow] if _is_slow(command) else []
  return pytest.param(command, id=f"{command.source}", marks=marks)


def _wrote(stdout: str, cwd: str) -> list[str]:
  """The files a launcher says it wrote: every `wrote a/b.csv, c.png (+ .txt caption),
  points/<id>.json` line (later names are in the first one's folder; `<id>` stands for any; a
  caption is the figure's name with .txt)."""
  paths = []
  for line in stdout.splitlines():
    if not line.startswith("wrote "):
      continue
    first, *rest = [w.strip() for w in line[len("wrote "):].split(",")]
    folder = os.path.dirname(first)
    for name in [os.path.basename(first)] + rest:
      name = re.sub(r"\s*\(.*?\)", "", name)  # "x.png (+ .txt caption)"
      paths.append(os.path.join(cwd, folder, re.sub(r"<\w+>", "*", name)))
      if "caption" in line and name.endswith(".png") and f"{name} (+ .txt caption)" in line:
        paths.append(os.path.join(cwd, folder, name[:-len(".png")] + ".txt"))
  return paths


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(argv):
  return subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                        timeout=900, check=False)


def _multi_process(command, workdir):
  """The documented two-process recipe (`for i in 0 1; do XLA_FLAGS=... python ... & done`):
  the same processes, each with its environment, on a free port."""
  line = command.text
  env = dict(os.environ)
  for assignment in re.findall(r"(\w+)=(\S+)\s+(?=\S*python)", line):
    env[assignment[0]] = assignment[1]
  port = _free_port()
  procs = []
  for i in (0, 1):
    argv = [w.replace("$i", str(i)) for w in docs.tiny(command, workdir)]
    argv = [re.sub(r"localhost:\d+", f"localhost:{port}", w) for w in argv]
    procs.append(subprocess.Popen([sys.executable, *argv[1:]], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=900)[0] for p in procs]
  return [p.returncode for p in procs], outs


def test_the_documents_name_commands_and_every_shipped_config_has_one():
  scripts = {c.argv[1] for c in COMMANDS if len(c.argv) > 1}
  assert {"launch/train.py", "launch/sweep.py", "launch/bench.py"} <= scripts
  assert docs.configs_without_command(COMMANDS) == []
  # the extraction joins continuation lines and wrapped inline spans
  readme = [c.argv for c in COMMANDS if c.source.startswith("README.md")
            and "--config.aggregator=trimmed_mean" in c.argv]
  assert any("--config.honest_set_options.fixed_count.num_byzantine=5" in a for a in readme)


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_documented_command_runs_at_a_tiny_size(command, tmp_path):
  why = docs.reason_not_run(command)
  if why:
    pytest.skip(f"not run: {why}")
  workdir = str(tmp_path / "work")
  if any("$" in w for w in command.argv):
    codes, outs = _multi_process(command, workdir)
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert os.path.exists(os.path.join(workdir, "draws.csv"))
    return
  argv = docs.tiny(command, workdir)
  proc = _run(argv)
  shown = f"$ {shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  assert proc.returncode == 0, shown
  assert "Traceback" not in proc.stderr, shown
  if argv[1].startswith("launch/"):
    written = _wrote(proc.stdout, ROOT)
    assert written, f"the launcher names no file it wrote\n{shown}"
    for path in written:
      assert glob.glob(path), f"said it wrote {path}, which is not there\n{shown}"
