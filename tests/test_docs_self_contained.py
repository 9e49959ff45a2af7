"""The repository explains itself: no citation of a document it does not contain, no team-process vocabulary, and
every in-repo citation (docs/REFERENCES.md items and anchors, DepthVAR steps of docs/METHODS.md) resolves.

Scans every tracked text file (`git ls-files`; a plain directory walk when git is unavailable) except this one, and
names each offence as file:line, so a failure says exactly what to rewrite.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()
REFERENCES = REPO_ROOT / "docs" / "REFERENCES.md"
METHODS = REPO_ROOT / "docs" / "METHODS.md"

# Documents that exist only outside the repository: citing them leaves a reader with nothing to open. The names
# are split so that a plain `git grep` for them finds no line of this file either.
OUTSIDE_DOCUMENTS = re.compile("|".join([
    "VAR_" "NOTES", "DEPTHVAR_" "SPEC", r"GOLDEN\.md", r"\bANCH" r"ORS\b", "EVAL_" "PROTOCOL", "USER_" "ASKS",
    r"LIGHTNING\.md", r"WEBDATASET\.md", r"STYLE\.md", r"\.\./shared", "shared/" "reference"]))
# How the team organised its work is not something a reader of the code can look up.
PROCESS_VOCABULARY = re.compile(
    r"\bissue\s*#?\s*\d+|\bthe issues?\b|\bissue's\b|\bthe brief\b|`device` tool|\bdevice tool\b"
    r"|\bwork ?packages?\b|\bother engineers\b", re.IGNORECASE)
SECTION_SIGN = re.compile(r"§\s*\d")
PAPER_SECTION = re.compile(r"\[([A-Za-z][A-Za-z0-9-]*) §\s*\d")
DV_STEP = re.compile(r"\bDV(\d+)\b")
DEPTHVAR_CHECK = re.compile(r"DepthVAR checks? (\d+(?:, \d+)*)")
REFERENCE_ITEMS = re.compile(r"REFERENCES\.md:? ((?:[BLE]\d+(?:-[BLE]\d+)?)(?:, [BLE]\d+(?:-[BLE]\d+)?)*)")
REFERENCE_ANCHOR = re.compile(r"REFERENCES\.md#([a-z0-9-]+)")
METHODS_ANCHOR = re.compile(r"METHODS\.md#([a-z0-9-]+)")


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # an unpacked copy without .git: walk the source tree
        roots = ("varianttrain", "tests", "configs", "docs", "checkpoints", "data")
        files = [p for root in roots for p in (REPO_ROOT / root).rglob("*") if p.is_file()]
        files += [p for p in REPO_ROOT.glob("*") if p.is_file()]
        return [p.relative_to(REPO_ROOT).as_posix() for p in files]


def _text_lines() -> list[tuple[str, int, str]]:
    """(file, line number, line) of every tracked text file but this one; binary files are skipped."""
    lines = []
    for name in _tracked_files():
        path = REPO_ROOT / name
        if name == THIS_FILE or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        lines += [(name, i, line) for i, line in enumerate(text.splitlines(), 1)]
    return lines


LINES = _text_lines()


def _offences(pattern: re.Pattern) -> list[str]:
    return [f"{name}:{i}: {line.strip()}" for name, i, line in LINES if pattern.search(line)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def test_the_scan_sees_the_repository():
    """The checks below would pass vacuously if the scan found nothing."""
    names = {name for name, _, _ in LINES}
    assert {"README.md", "docs/REFERENCES.md", "varianttrain/models/var.py", "tests/conftest.py"} <= names
    assert THIS_FILE not in names


def test_no_citation_of_documents_outside_the_repository():
    bad = _offences(OUTSIDE_DOCUMENTS)
    assert not bad, ("cite a paper, the official code or a doc of this repository (docs/REFERENCES.md) instead:\n"
                     + "\n".join(bad))


def test_no_process_vocabulary():
    bad = _offences(PROCESS_VOCABULARY)
    assert not bad, "say what the code does, not which discussion asked for it:\n" + "\n".join(bad)


def test_section_numbers_name_a_listed_paper():
    """Every '§n' is '[Paper §n]' with Paper a label of the table in docs/REFERENCES.md."""
    labels = set(re.findall(r"^\| \[([A-Za-z][A-Za-z0-9-]*)\]", REFERENCES.read_text(), re.MULTILINE))
    assert {"VAR", "VARiant", "DepthVAR"} <= labels
    bad = []
    for name, i, line in LINES:
        cited = [m.group(1) for m in PAPER_SECTION.finditer(line)]
        if len(SECTION_SIGN.findall(line)) != len(cited) or any(label not in labels for label in cited):
            bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "write section numbers as [Paper §n] with a paper of docs/REFERENCES.md:\n" + "\n".join(bad)


def test_depthvar_steps_and_checks_exist():
    methods = METHODS.read_text()
    steps = {int(n) for n in re.findall(r"^\*\*DV(\d+) ", methods, re.MULTILINE)}
    checks = {int(n) for n in re.findall(r"^(\d+)\. ", methods.split("What the tests check", 1)[1], re.MULTILINE)}
    assert steps == set(range(1, max(steps) + 1)) and checks >= set(range(1, 11))
    bad = []
    for name, i, line in LINES:
        cited = {int(n) for n in DV_STEP.findall(line)}
        cited_checks = {int(n) for m in DEPTHVAR_CHECK.finditer(line) for n in m.group(1).split(", ")}
        if cited - steps or cited_checks - checks:
            bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "DepthVAR steps / checks that docs/METHODS.md does not define:\n" + "\n".join(bad)


def test_references_items_and_anchors_exist():
    references = REFERENCES.read_text()
    items = set(re.findall(r"\*\*([BLE]\d+)[ *]", references))
    assert {"B1", "B20", "L1", "L16", "E1", "E6"} <= items
    anchors_refs, anchors_methods = _anchors(REFERENCES), _anchors(METHODS)
    bad = []
    for name, i, line in LINES:
        cited = set()
        for m in REFERENCE_ITEMS.finditer(line):
            for part in m.group(1).split(", "):
                first, _, last = part.partition("-")
                kind, lo = first[0], int(first[1:])
                hi = int(last.lstrip("BLE")) if last else lo
                cited |= {f"{kind}{n}" for n in range(lo, hi + 1)}
        if (cited - items or set(REFERENCE_ANCHOR.findall(line)) - anchors_refs
                or set(METHODS_ANCHOR.findall(line)) - anchors_methods):
            bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "citations of docs/REFERENCES.md / docs/METHODS.md that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize("heading, slug", [
    ("## Behaviour of the official VAR code that we reproduce", "behaviour-of-the-official-var-code-that-we-reproduce"),
    ("### [DepthVAR] — what we take from it", "depthvar--what-we-take-from-it"),
    ("## DepthVAR (`depthvar`)", "depthvar-depthvar"),
])
def test_anchor_slugs_follow_github(heading, slug):
    assert _slug(heading.lstrip("#")) == slug
