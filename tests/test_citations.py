"""Every citation in the repository resolves to something in the repository.

The code cites the project's notes as `docs/notes.md §N` (also as ranges and lists of sections,
`§5-§7`, `§2, §10`, `§6/§8`, `§6 and §8`) and its sources with short tags such as [PR] or
[P1 §4.2]. This test reads every tracked *.py and *.md file and fails, naming file and line,
when
  (a) a cited notes file (any `*notes.md`, in any case) is not in the repository,
  (b) a cited section number has no `§N` heading in that file,
  (c) a citation tag is not defined in the key of docs/notes.md §0.
Inside docs/notes.md, bare cross-references (`see §7`, outside [...] and `code`) must name one
of its own headings. This file itself is not scanned: its self-tests feed the checker made-up
citations, broken on purpose.

A tag is an opening bracket, an upper-case letter and one more upper-case letter or digit,
then `]`, a space, a comma or a slash ([PR], [P1 §4.2], [P1/P2 Eq. 3]); longer words in
brackets ([ASSESS], [SFT], shapes like [B, T]) are not tags.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES_REL = "docs/notes.md"
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
# Tags the key must define, whether or not the code uses them today: the two versions of the
# paper, the official code, its veRL port and the implicit-PRM code.
REQUIRED_TAGS = {"P1", "P2", "PR", "VR", "IP"}

# A notes file, optionally followed by sections: `§3`, `§5-§7` (a range), `§2, §10`, `§6/§8`,
# `§6 and §8`, `§6 & §8`.
NOTES_CITE = re.compile(
    r"(?P<path>[\w./-]*(?i:notes)\.md)"
    r"(?P<secs>[ \t]+§\d+(?:[ \t]*(?:[-–][ \t]*§?|(?:,|/|and|&)[ \t]*§)\d+)*)?")
SECTION_TOKEN = re.compile(r"(?P<dash>[-–])?[ \t]*§?(?P<num>\d+)")
HEADING = re.compile(r"^#{1,6}[ \t]+§(\d+)\b")
TAG = re.compile(r"\[(?P<tags>[A-Z][A-Z0-9](?:/[A-Z][A-Z0-9])*)(?=[\]\s,/])")
KEY_ROW = re.compile(r"^\|[ \t]*\[([A-Z][A-Z0-9])\][ \t]*\|(.*)$")


# ----------------------------------------------------------------------------------------------
# The checker: pure functions of file texts, so the self-tests below can feed it broken input.
# ----------------------------------------------------------------------------------------------

def tracked_files():
    """Repository-relative paths of the files git tracks (a plain walk when git is missing)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return sorted(p for p in out.stdout.decode().split("\0") if p)
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", ".pytest_cache", "runs", "out"}
        return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                      if p.is_file() and not skip & set(p.relative_to(ROOT).parts))


def cited_sections(secs):
    """`§5-§7` -> [5, 6, 7]; `§2, §10` -> [2, 10]; None -> []."""
    out = []
    for m in SECTION_TOKEN.finditer(secs or ""):
        n = int(m.group("num"))
        if m.group("dash") and out:
            out.extend(range(out[-1] + 1, n + 1))
        else:
            out.append(n)
    return out


def headings(text):
    """Section numbers that have a `## §N.` heading."""
    return {int(m.group(1)) for line in text.splitlines() if (m := HEADING.match(line))}


def key_tags(text):
    """Tags defined by the key table of §0: the rows whose first cell is a bracketed tag."""
    tags, in_key = {}, False
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            in_key = m.group(1) == "0"
        elif in_key and (row := KEY_ROW.match(line)):
            tags[row.group(1)] = row.group(2)
    return tags


def resolve(citing, path, files):
    """The tracked file a citation in `citing` names: relative to the citing file's folder or
    to the repository root. None when neither is tracked."""
    for base in (Path(citing).parent, Path()):
        candidate = (base / path).as_posix()
        parts = []
        for part in candidate.split("/"):  # normalise ./ and ../ without touching the disk
            if part == "..":
                parts = parts[:-1]
            elif part not in ("", "."):
                parts.append(part)
        if "/".join(parts) in files:
            return "/".join(parts)
    return None


def check_text(rel, text, files, read, defined_tags):
    """Problems in one file, each 'file:line: what'. `read(rel)` gives a tracked file's text."""
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{lineno}"
        for m in NOTES_CITE.finditer(line):
            target = resolve(rel, m.group("path"), files)
            if target is None:
                problems.append(f"{where}: cites {m.group('path')}, which is not a tracked file")
                continue
            have = headings(read(target))
            for n in cited_sections(m.group("secs")):
                if n not in have:
                    problems.append(f"{where}: cites {target} §{n}, which has no '## §{n}' heading")
        for m in TAG.finditer(line):
            for tag in m.group("tags").split("/"):
                if tag not in defined_tags:
                    problems.append(f"{where}: tag [{tag}] is not defined in the key of "
                                    f"{NOTES_REL} §0")
    return problems


def internal_ref_problems(rel, text):
    """Bare `§N` cross-references inside the notes (not in [...], `...` or a heading) must name
    one of the notes' own headings; paper sections are always written inside a tag, [P1 §4.2]."""
    have, problems = headings(text), []
    for lineno, line in enumerate(text.splitlines(), 1):
        if HEADING.match(line):
            continue
        bare = re.sub(r"`[^`]*`", "", re.sub(r"\[[^\]]*\]", "", line))
        for m in re.finditer(r"§(\d+)(?!\.\d)", bare):
            if int(m.group(1)) not in have:
                problems.append(f"{rel}:{lineno}: refers to §{m.group(1)}, which has no heading")
    return problems


def repository_problems():
    files = tracked_files()
    texts = {}

    def read(rel):
        if rel not in texts:
            texts[rel] = (ROOT / rel).read_text(encoding="utf-8", errors="replace")
        return texts[rel]

    fileset = set(files)
    defined = key_tags(read(NOTES_REL)) if NOTES_REL in fileset else {}
    problems = []
    for rel in files:
        if rel.endswith((".py", ".md")) and rel != SELF and (ROOT / rel).is_file():
            problems += check_text(rel, read(rel), fileset, read, defined)
    return problems


# ----------------------------------------------------------------------------------------------
# The repository's own citations.
# ----------------------------------------------------------------------------------------------

def test_notes_file_has_sections_0_to_10_and_a_key_with_links():
    assert NOTES_REL in set(tracked_files()), f"{NOTES_REL} is not tracked by git"
    text = (ROOT / NOTES_REL).read_text(encoding="utf-8")
    assert headings(text) >= set(range(11)), f"missing headings: {set(range(11)) - headings(text)}"
    key = key_tags(text)
    assert REQUIRED_TAGS <= set(key), f"key lacks {REQUIRED_TAGS - set(key)}"
    no_link = [t for t, row in key.items() if "https://" not in row]
    assert not no_link, f"key rows without a URL: {no_link}"


def test_every_citation_resolves():
    problems = repository_problems()
    assert not problems, "dangling citations:\n" + "\n".join(problems)


def test_cross_references_inside_the_notes_resolve():
    text = (ROOT / NOTES_REL).read_text(encoding="utf-8")
    problems = internal_ref_problems(NOTES_REL, text)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# The checker itself, on made-up files.
# ----------------------------------------------------------------------------------------------

NOTES_TEXT = ("# notes\n## §0. Key\n| tag | x |\n|---|---|\n| [PR] | code https://x |\n"
              "## §1. One\n## §2. Two\n## §3. Three\n")


def check(rel, text, files=("docs/notes.md", "a.py", "docs/other.md")):
    return check_text(rel, text, set(files), lambda r: NOTES_TEXT, key_tags(NOTES_TEXT))


def test_section_forms():
    assert cited_sections(" §5-§7") == [5, 6, 7]
    assert cited_sections(" §2, §10") == [2, 10]
    assert cited_sections(" §6/§8") == [6, 8]
    assert cited_sections(" §6 and §8") == [6, 8]
    assert cited_sections(" §1-3") == [1, 2, 3]
    assert cited_sections(None) == []


def test_checker_accepts_good_citations():
    assert check("a.py", "# x (docs/notes.md §1-§3, [PR] and [PR]/x)\n") == []
    assert check("docs/other.md", "see notes.md §2 or ./notes.md §1, §3\n") == []


def test_checker_names_file_and_line_of_each_problem():
    text = ("ok\n"
            "bad section docs/notes.md §2-§4\n"   # §4 has no heading
            "bad file docs/nowhere/notes.md §1\n"  # no such file
            "bad tag [ZZ §3] and [PR/QQ]\n"        # tags ZZ and QQ are not in the key
            "outside the repository: ../shared/PRIME_NOTES.md §1\n"
            "not tags: [ASSESS] [SFT] [B, T] [T] x[:, 0]\n")
    problems = check("a.py", text)
    assert problems == [
        "a.py:2: cites docs/notes.md §4, which has no '## §4' heading",
        "a.py:3: cites docs/nowhere/notes.md, which is not a tracked file",
        "a.py:4: tag [ZZ] is not defined in the key of docs/notes.md §0",
        "a.py:4: tag [QQ] is not defined in the key of docs/notes.md §0",
        "a.py:5: cites ../shared/PRIME_NOTES.md, which is not a tracked file",
    ]


def test_internal_refs_checker():
    text = NOTES_TEXT + "see §2 and §3, [P1 §9.1] is the paper, `§7` is code; §9 is not\n"
    assert internal_ref_problems("n.md", text) == ["n.md:9: refers to §9, which has no heading"]
