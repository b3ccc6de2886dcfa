"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()


def test_readme_shows_the_main_job():
    assert "cf-fit fit --config recipes/slowfast.yaml" in (ROOT / "README.md").read_text()
