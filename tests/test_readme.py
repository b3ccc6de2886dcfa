"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()


def test_readme_shows_the_main_job():
    assert "cf-fit fit --config recipes/slowfast.yaml" in (ROOT / "README.md").read_text()


def test_code_and_docs_cite_no_file_outside_the_repository():
    """Docs and docstrings stand alone: no pointer to the working notes the project started from."""
    outside = ("design" + ".md", "ecosystem" + "-notes")
    folders = ("cf_lightning", "memory_policies", "docs", "recipes", "benchmarks", "scripts", "tests")
    files = [ROOT / "README.md", *(p for folder in folders for p in (ROOT / folder).rglob("*")
                                   if p.suffix in (".py", ".md", ".yaml"))]
    citing = [str(p.relative_to(ROOT)) for p in files if any(name in p.read_text() for name in outside)]
    assert not citing, f"{citing} cite {outside}, which are not in the repository"
