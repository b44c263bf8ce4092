"""The documentation: the generated reference pages list every option of the code, and README.md's links resolve.

The site itself is built by ``mkdocs build --strict`` in CI (.ci/run), which checks the links of docs/.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from pathlib import Path

import pytest

from medkge.cli import build_parser
from medkge.config import all_keys

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_configuration_page_lists_every_key_once_in_order():
    listed = re.findall(r"^\| `([^`]+)` \|", hooks.config_reference(), re.MULTILINE)
    assert listed == all_keys()


def test_the_configuration_page_gives_type_default_and_limits():
    rows = {row.split(" | ")[0]: row for row in hooks.config_reference().splitlines() if row.startswith("| `")}
    assert rows["| `train.epochs`"] == "| `train.epochs` | int, >= 1 | `100` | maximum number of epochs |"
    assert "`adam` or `sparse_adam`" in rows["| `train.optimizer`"]
    assert "`[10, 20, ..., 640]`" in rows["| `model.dims`"]
    assert "or `null`" in rows["| `train.threads`"]


def test_the_command_line_page_lists_every_command_and_option():
    page = hooks.cli_reference()
    for name, parser in _subcommands().items():
        assert f"## `medkge {name}`" in page
        section = page.split(f"## `medkge {name}`")[1].split("\n## ")[0]
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in section, (name, option)
            if not action.option_strings:
                assert f"`{action.metavar or action.dest}`" in section, (name, action.dest)


def test_the_hook_fills_the_pages_markers():
    for page, marker, expected in (
        ("configuration.md", hooks.CONFIG_MARKER, "`train.lr`"),
        ("cli.md", hooks.CLI_MARKER, "## `medkge serve`"),
    ):
        text = (ROOT / "docs" / page).read_text()
        assert marker in text
        filled = hooks.on_page_markdown(text)
        assert marker not in filled and expected in filled


def test_an_included_file_links_into_docs_from_the_page(tmp_path):
    to_choices = os.path.relpath(ROOT / "docs" / "choices.md", tmp_path)
    (tmp_path / "notes.md").write_text(f"[choices]({to_choices}#other-choices), [web](https://example.org), [x](y.md)")
    text = hooks.on_page_markdown(f"<!-- include: {tmp_path / 'notes.md'} -->")
    assert text == "[choices](choices.md#other-choices), [web](https://example.org), [x](y.md)"


# ---- README.md ------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(path: Path) -> str:
    """The markdown of ``path`` without its code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)


def _anchors(path: Path) -> set[str]:
    return {_slug(title) for title in re.findall(r"^#{1,6} (.+)$", _prose(path), re.MULTILINE)}


def test_every_link_in_the_readme_resolves():
    links = LINK.findall(_prose(README))
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (README.parent / target) if target else README
        assert path.exists(), link
        if anchor:
            assert path.suffix == ".md" and anchor in _anchors(path), link


@pytest.mark.parametrize("path", ["README.md", "docs/getting-started.md"])
def test_no_two_sections_share_a_title(path):
    titles = re.findall(r"^#{1,6} (.+)$", _prose(ROOT / path), re.MULTILINE)
    assert len(titles) == len(set(titles))


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 250  # details live in docs/
