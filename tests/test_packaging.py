"""What the napari hub and PyPI read: licence, URLs, classifiers, the Qt extra, images that resolve."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = "https://raw.githubusercontent.com/napari-xaiclip/napari-xaiclip/main/"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_licence_urls_and_classifiers():
    project = _project()
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()
    assert {"Homepage", "Documentation", "Source", "Bug Tracker"} <= set(project["urls"])
    classifiers = set(project["classifiers"])
    for needed in ("Framework :: napari", "Intended Audience :: Science/Research",
                   "Intended Audience :: Healthcare Industry", "Operating System :: OS Independent"):
        assert needed in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert project["optional-dependencies"]["all"] == ["napari[all]>=0.5"]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in build


def test_readme_images_are_absolute_and_exist_in_the_repository():
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images
    for url in images:
        assert url.startswith(RAW), url
        assert (ROOT / url[len(RAW):]).is_file(), url


def test_readme_shows_pip_install_and_the_citations():
    text = (ROOT / "README.md").read_text()
    assert "pip install napari-xaiclip" in text
    assert "10.1038/s41467-024-44824-z" in text and "XAI-CLIP" in text.split("## Citation")[1]
