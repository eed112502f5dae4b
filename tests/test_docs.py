# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Documentation hygiene: links resolve inside the repository, and no committed file holds a machine's paths."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: a Markdown file named in code spans, e.g. `docs/geometry.md`
MD_NAME = re.compile(r"`([\w./-]+\.md)`")
#: an absolute path under a folder that only exists on some machine (not a URL's path: nothing word-like before it)
MACHINE_PATH = re.compile(r"(?<![\w.~$}])/(tmp|work|root|home)/")
#: files that may hold such paths, and why
MACHINE_PATH_EXEMPT = {
    # the device-machine scripts install into that machine's /tmp (a bare image), by design
    "scripts/gpu/env.sh",
    "scripts/gpu/paper.sh",
    "scripts/gpu/session.sh",
}


def _repo_files() -> list[str]:
    """Files a clone holds plus new ones not ignored (what the next commit can contain)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f)))


def _text(path: str) -> str | None:
    with open(os.path.join(ROOT, path), "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _inside(path: str) -> bool:
    real = os.path.realpath(path)
    return real == ROOT or real.startswith(ROOT + os.sep)


REPO_FILES = _repo_files()
MARKDOWN = [f for f in REPO_FILES if f.endswith(".md")]


@pytest.mark.parametrize("doc", MARKDOWN)
def test_links_resolve_inside_the_repository(doc):
    text = _text(doc) or ""
    here = os.path.dirname(os.path.join(ROOT, doc))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        path = os.path.join(here, target.split("#", 1)[0])
        if not (_inside(path) and os.path.exists(path)):
            broken.append(target)
    for name in MD_NAME.findall(text):
        # a Markdown file named in the text is a path from the repository root or from this file's folder, or the
        # end of one ("each bundle's `docs/README.md`")
        candidates = (os.path.join(ROOT, name), os.path.join(here, name))
        if not any(_inside(p) and os.path.isfile(p) for p in candidates) and not any(
            f == name or f.endswith("/" + name) for f in REPO_FILES
        ):
            broken.append(f"`{name}`")
    assert not broken, f"{doc}: links or file names that do not resolve inside the repository: {broken}"


def test_no_machine_paths_in_committed_files():
    found = []
    for name in REPO_FILES:
        if name in MACHINE_PATH_EXEMPT:
            continue
        text = _text(name)
        for number, line in enumerate((text or "").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "absolute machine paths (use a placeholder such as <bundles copy>):\n" + "\n".join(found)
