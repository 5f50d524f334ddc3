"""README.md opens with the two commands a newcomer needs, and CI runs the README's test command."""

import os
import re

from conftest import ROOT


def readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  return re.findall(r"```(?:bash|sh)?\n(.*?)\n```", text, re.S)[:2]


def test_readme_opens_with_setup_and_run_then_tests():
  run, tests = readme_commands()
  assert "pip install" in run and "launch/train.py" in run
  assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
  _, tests = readme_commands()
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert tests.strip() in ci.splitlines()
