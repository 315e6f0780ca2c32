"""The README's promises: the two Quickstart commands, CI running the test one, the API snippet running."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart")[1].split("\n## ")[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    demo, tests = quickstart_commands()
    assert demo.endswith("banets demo") and "pytest" in tests
    assert tests in ROOT.joinpath(".ci/run").read_text()


def test_api_snippet_runs(monkeypatch):
    readme = ROOT.joinpath("README.md").read_text()
    snippet = readme.split("## Python API")[1].split("```python\n")[1].split("```")[0]
    snippet = snippet.replace("epochs=15", "epochs=1")
    exec(compile(snippet, "README.md", "exec"), {})
