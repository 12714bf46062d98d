"""The map stays true: every relative link in README.md and docs/ resolves (anchors included), and every
`python <script> ...` command in the README's code blocks names a script of the project and only flags that
script's own parser lists in its --help."""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted({os.path.join(ROOT, "README.md"), os.path.join(ROOT, "tests", "README.md"),
                *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)})
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FLAG = re.compile(r"--[a-z0-9][a-z0-9_.-]*")


def prose_and_code(path: str, *, keep_inline_code: bool = False) -> tuple[list[str], list[str]]:
  """The page's lines outside fenced code blocks (without their `inline code`, unless asked), and those inside."""
  prose, code, fenced = [], [], False
  with open(path, encoding="utf-8") as handle:
    for line in handle.read().splitlines():
      if FENCE.match(line.strip()):
        fenced = not fenced
      elif fenced:
        code.append(line)
      else:  # a link written inside `code` is not a link
        prose.append(line if keep_inline_code else re.sub(r"`[^`]*`", "", line))
  return prose, code


def links(path: str) -> list[str]:
  prose, _ = prose_and_code(path)
  return [target for line in prose for target in LINK.findall(line)]


def github_slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation but `_` and `-` dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set[str]:
  prose, _ = prose_and_code(path, keep_inline_code=True)  # GitHub's anchor keeps a heading's `code` text
  slugs, seen = set(), {}
  for line in prose:
    match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if match:
      slug = github_slug(match.group(1))
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      slugs.add(slug if count == 0 else f"{slug}-{count}")
  return slugs


def broken_link(page: str, target: str) -> str | None:
  """Why `target`, written on `page`, does not resolve; None when it does (or is not a relative link)."""
  if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
    return None
  path, _, anchor = target.partition("#")
  resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
  if not os.path.exists(resolved):
    return f"{target}: no such file"
  if anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
    return f"{target}: no heading with the anchor #{anchor}"
  return None


def test_pages_exist_and_every_relative_link_resolves():
  expected = ["README.md", "docs/configuration.md", "docs/run_directory.md", "docs/plasticity.md", "docs/design.md",
              "docs/benchmarks.md", "docs/results/README.md", "tests/README.md"]
  assert [page for page in expected if not os.path.exists(os.path.join(ROOT, page))] == []
  broken = [f"{os.path.relpath(page, ROOT)}: {why}" for page in PAGES for target in links(page)
            if (why := broken_link(page, target))]
  assert broken == []


def test_the_link_check_sees_a_broken_file_a_broken_anchor_and_ignores_code(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Resume: one consistent point\n")
  readme = tmp_path / "README.md"
  readme.write_text("[ok](docs/page.md) [anchor](docs/page.md#resume-one-consistent-point) ![img](missing.png)\n"
                    "[bad anchor](docs/page.md#resume) [web](https://example.org/x) `[not](a-link.md)`\n"
                    "```\n[in code](nowhere.md)\n```\n")
  found = {target: broken_link(str(readme), target) for target in links(str(readme))}
  assert found == {"docs/page.md": None, "docs/page.md#resume-one-consistent-point": None,
                   "missing.png": "missing.png: no such file",
                   "docs/page.md#resume": "docs/page.md#resume: no heading with the anchor #resume",
                   "https://example.org/x": None}


def commands(path: str) -> list[list[str]]:
  """`python <script> ...` commands in the page's code blocks, one argv each from the script on (a line
  continued with a backslash is joined; `&&` chains and `# comments` are split off)."""
  _, code = prose_and_code(path)
  joined = re.sub(r"\\\n\s*", " ", "\n".join(code))
  found = []
  for line in joined.splitlines():
    for part in line.split("&&"):
      words = shlex.split(part, comments=True)
      for index, word in enumerate(words):
        if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", word) and index + 1 < len(words):
          found.append(words[index + 1:])
          break
  return found


def script_of(argv: list[str]) -> list[str] | None:
  """The project script an argv runs (`train.py`, `bench/learn.py`, `-m plasticity`); None for another
  program's module (venv, pip, pytest)."""
  if argv[0] == "-m":
    module = argv[1]
    is_ours = os.path.exists(os.path.join(ROOT, *module.split("."))) or \
        os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py")
    return ["-m", module] if is_ours else None
  return [argv[0]] if argv[0].endswith(".py") else None


@functools.lru_cache(maxsize=None)
def accepted_flags(script: tuple[str, ...]) -> frozenset[str]:
  """The option strings the script's own parser lists in its --help."""
  result = subprocess.run([sys.executable, *script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, f"{' '.join(script)} --help: {result.stderr[-2000:]}"
  return frozenset(FLAG.findall(result.stdout))


def unknown_flags(argv: list[str], script: list[str]) -> list[str]:
  flags = [word.split("=", 1)[0] for word in argv[len(script):] if word.startswith("--")]
  return [flag for flag in flags if flag not in accepted_flags(tuple(script))]


def test_every_readme_command_names_a_script_and_flags_its_parser_accepts():
  readme_commands = commands(os.path.join(ROOT, "README.md"))
  ours = [(argv, script) for argv in readme_commands if (script := script_of(argv))]
  assert len(ours) >= 8, readme_commands  # train, resume, eval, probe, sweep, compare, ...
  missing = [argv for argv, script in ours if script[0] != "-m" and not os.path.exists(os.path.join(ROOT, script[0]))]
  assert missing == []
  bad = {" ".join(argv): unknown for argv, script in ours if (unknown := unknown_flags(argv, script))}
  assert bad == {}


def test_the_command_check_sees_a_flag_the_parser_does_not_have(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("```bash\n.venv/bin/python compare.py runs/x --out report/ --no-such-flag 3  # note\n"
                    "python3.11 -m venv .venv && .venv/bin/pip install -e .\n```\n")
  found = commands(str(readme))
  assert found == [["compare.py", "runs/x", "--out", "report/", "--no-such-flag", "3"], ["-m", "venv", ".venv"]]
  assert script_of(found[1]) is None
  assert unknown_flags(found[0], script_of(found[0])) == ["--no-such-flag"]


@pytest.mark.parametrize("heading, slug", [
    ("Resume: one consistent point", "resume-one-consistent-point"),
    ("Training (`train.py`)", "training-trainpy"),
    ("The `lyle2024` preset", "the-lyle2024-preset"),
    ("`dqn_zoo`: DQN Zoo's Double DQN", "dqn_zoo-dqn-zoos-double-dqn"),
])
def test_github_slug(heading, slug):
  assert github_slug(heading) == slug
