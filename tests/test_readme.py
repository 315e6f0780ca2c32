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


def test_api_snippet_runs_as_printed_and_banets_report_and_resume_read_its_run(monkeypatch, tmp_path, capsys, one_thread):
    from banets.cli import main

    monkeypatch.chdir(tmp_path)
    readme = ROOT.joinpath("README.md").read_text()
    snippet = readme.split("## Your model, your data: the Python API")[1].split("```python\n")[1].split("```")[0]
    assert "epochs=15" in snippet
    exec(compile(snippet.replace("epochs=15", "epochs=1"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[-5:]] == ["teacher", "BAN-1", "BAN-2", "BAN+L", "Ens*2"]
    assert main(["report", "runs/digits"]) == 0
    assert "mean ± SD over 2 seeds" in capsys.readouterr().out and (tmp_path / "runs/digits/report/report.md").is_file()
    assert main(["resume", "runs/digits"]) == 0  # finished: nothing to train, the report again
    assert "every seed is finished" in capsys.readouterr().out


def test_the_demo_description_names_what_the_demo_runs():
    from banets.config import load_config
    from banets.generations import plan_ensembles, plan_generations

    section = ROOT.joinpath("README.md").read_text().split("## Quickstart")[1].split("```bash")[0]
    config = load_config("demo")
    names = [s.name for s in plan_generations(config.ban)] + list(plan_ensembles(plan_generations(config.ban), config.ban))
    assert names == ["teacher", "BAN-1", "BAN-2", "BAN-3", "BAN+L", "LS", "CE", "Ens*2", "Ens*3", "T+CE"]
    for name in names:
        assert re.search(rf"(?<![\w+*-]){re.escape(name)}(?![\w+*-])", section), name
    assert f"{['no', 'one', 'two', 'three'][len(config.seeds)]} seeds" in section
    assert f"label smoothing {config.ban.controls['LS']['label_smoothing']}" in section and config.ban.controls["CE"] == {}


def test_version_is_one_number_everywhere(capsys):
    import tomllib

    import banets
    from banets.cli import main

    version = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]["version"]
    assert banets.__version__ == version and f"## {version} " in ROOT.joinpath("CHANGELOG.md").read_text()
    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.strip() == f"banets {version}"
    assert ROOT.joinpath("LICENSE").read_text().startswith("MIT License")
    assert ROOT.joinpath("src", "banets", "py.typed").exists()


def test_modules_import_only_those_after_them_in_the_readmes_layout_table():
    """Imports run one way (CLI -> experiment -> ... -> config): the README's table is the order."""
    import ast

    section = ROOT.joinpath("README.md").read_text().split("- Layout, in the order data flow")[1].split("\n\n  `")[0]
    order = [name.removesuffix(".py").rstrip("/") for row in re.findall(r"^  \| (`.+?) \|", section, re.M)
             for name in re.findall(r"`([\w/.]+)`", row)]
    assert order[0] == "cli" and order[-1] == "config"
    package = ROOT / "src" / "banets"
    backwards = []
    for position, module in enumerate(order):
        files = sorted((package / module).glob("*.py")) if (package / module).is_dir() else [package / f"{module}.py"]
        for path in files:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("banets."):
                    imported = node.module.split(".")[1]
                elif isinstance(node, ast.ImportFrom) and node.module == "banets":
                    imported = node.names[0].name
                else:
                    continue
                if imported in order and order.index(imported) < position:
                    backwards.append(f"{path.name} imports {imported}")
    assert backwards == []
