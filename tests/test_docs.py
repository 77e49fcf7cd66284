"""The documentation: the settings table is the one made from Settings, and every link resolves."""

import re

from service import settings

from .conftest import ROOT


def test_the_settings_table_is_current() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings.markdown(), "run `make docs`"


def test_every_setting_is_documented() -> None:
    for name, field in settings.Settings.model_fields.items():
        assert field.description, f"LSTM_{name.upper()} has no description"


def test_the_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("```", 2)[1]
    assert head.strip().splitlines()[1:3] == [
        "make serve   # set-up included: serves the shipped model on http://127.0.0.1:8000 (docs at /docs)",
        "make test    # set-up included: the whole test suite (make lint: ruff, mypy, hadolint)",
    ]


def test_every_relative_link_resolves() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_compose_passes_every_setting_through() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    service_env = compose.split("environment:", 1)[1].split("ports:", 1)[0]
    passed = set(re.findall(r"^\s+(LSTM_[A-Z_]+):", service_env, re.MULTILINE))
    expected = {f"LSTM_{name.upper()}" for name in settings.Settings.model_fields if name != "model_repository"}
    assert passed == expected


def test_every_module_the_docs_name_exists() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for path in re.findall(r"(?:service|training|bench|tests)/[\w/]+\.py", page.read_text()):
            assert (ROOT / path).exists(), f"{page.name} names {path}"
