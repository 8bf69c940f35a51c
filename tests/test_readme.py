"""The documentation's commands, links and paths point at things that exist.

The README's quick-start commands must compose (``src/*.py`` with ``--cfg job``, which prints the
configuration without running) or be Makefile targets (``make -n``); every other documented
``python src/*.py`` command must compose too (in process, placeholders settled); every relative
link in the documentation must reach a file, and its ``#anchor`` a heading; every repository
path, module (``python -m ...``) and make target the documentation names must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "notebooks" / "README.md",
    ROOT / "sweeps" / "README.md",
]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# a repository path: starts with one of these folders, no placeholder (<...>, {...}, $...)
REPO_PATH = re.compile(
    r"(?<![\w/.$<{-])((?:src|conf|tests|docs|notebooks|sweeps|benchmarks|\.ci)/[\w./*+-]*)"
)
PYTHON_MODULE = re.compile(r"python3? -m ((?:dssd|benchmarks)[\w.]*)")
MAKE_COMMAND = re.compile(r"(?:^|`)\s*make ([a-z][\w-]*)(?=[\s`]|$)", re.MULTILINE)
MAKE_TARGET = re.compile(r"^([\w-]+)\s*:(?!=)", re.MULTILINE)


def split_fenced(text: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The fenced blocks as (info string, lines) and the lines outside any fence."""
    blocks: list[tuple[str, list[str]]] = []
    prose: list[str] = []
    current: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = (line.strip().strip("`~").strip(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[1].append(line)
        else:
            prose.append(line)
    if current is not None:
        raise AssertionError("a fenced code block is never closed")
    return blocks, prose


def section(text: str, title: str) -> str:
    """The text under the first heading matching ``title`` (case-insensitive), up to the next
    heading of the same or a higher level; headings inside fenced blocks do not count."""
    lines = text.splitlines()
    start = level = None
    fenced = False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        if start is None and re.fullmatch(title, match.group(2), re.IGNORECASE):
            start, level = i + 1, len(match.group(1))
        elif start is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:i])
    if start is None:
        raise AssertionError(f"README.md has no heading matching {title!r}")
    return "\n".join(lines[start:])


def shell_commands(block: list[str]) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuations joined, comments dropped."""
    joined = "\n".join(block).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c for c in commands if c]


def quick_start_commands(readme: str) -> list[list[str]]:
    """The commands of the shell blocks under the quick-start heading; none is an error."""
    blocks, _ = split_fenced(section(readme, r"quick[ -]?start"))
    commands = [
        command
        for info, lines in blocks
        if info.split()[:1] in (["bash"], ["sh"], ["shell"], ["console"])
        for command in shell_commands(lines)
    ]
    assert commands, "no commands found in the README's quick-start shell blocks"
    return commands


def makefile_targets() -> set[str]:
    return set(MAKE_TARGET.findall((ROOT / "Makefile").read_text()))


def module_exists(name: str) -> bool:
    """Whether ``python -m name`` finds a module in the repository (top level or src/)."""
    parts = Path(*name.split("."))
    for base in (ROOT, ROOT / "src"):
        if (base / parts).with_suffix(".py").is_file() or (base / parts / "__main__.py").is_file():
            return True
    return False


def check_dry_run(output: str) -> list[str]:
    """Problems in a ``make -n`` listing: scripts or modules it would run that do not exist."""
    problems = []
    for line in output.splitlines():
        words = line.split()
        for i, word in enumerate(words):
            if (
                word == "-m"
                and i + 1 < len(words)
                and words[i + 1].split(".")[0]
                in (
                    "dssd",
                    "benchmarks",
                )
            ):
                if not module_exists(words[i + 1]):
                    problems.append(f"no module {words[i + 1]} ({line.strip()})")
            elif word.endswith(".py") and not word.startswith(("-", "/")):
                if not (ROOT / word).is_file():
                    problems.append(f"no script {word} ({line.strip()})")
    return problems


def test_quick_start_extraction() -> None:
    """Shell blocks under the heading only, continuations joined, comments dropped; a README
    without such commands fails loudly."""
    readme = """# Title
## Quick start
```bash
# a comment line
make train   # trains
python src/train.py a=1 \\
    b=2
```
```yaml
key: value
```
## Next
```bash
make test
```
"""
    assert quick_start_commands(readme) == [
        ["make", "train"],
        ["python", "src/train.py", "a=1", "b=2"],
    ]
    with pytest.raises(AssertionError, match="no heading"):
        quick_start_commands("# Title\n```bash\n## Quick start\n```\n")
    with pytest.raises(AssertionError, match="no commands"):
        quick_start_commands("## Quick start\ntext\n## Next\n```bash\nmake test\n```\n")


def check_command(command: list[str]) -> list[str]:
    """Argument list that checks one quick-start command without running it: an entry point
    prints its composed configuration (``--cfg job``), a make command dry-runs (``make -n``).
    A placeholder such as ``<run>`` stands for a name the reader fills in: here the bare word."""
    command = [re.sub(r"<(\w+)[^>]*>", r"\1", word) for word in command]
    if command[0] in ("python", "python3") and re.fullmatch(r"src/\w+\.py", command[1]):
        return [sys.executable, str(ROOT / command[1]), *command[2:], "--cfg", "job"]
    if command[0] == "make":
        return ["make", "-n", *command[1:]]
    raise AssertionError(f"{shlex.join(command)}: not a src/*.py entry point or a make command")


def test_readme_quick_start_commands_compose() -> None:
    """Every quick-start command composes, and its make recipe names only scripts and modules
    that exist. The checks run side by side: each entry point spends seconds importing."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    commands = quick_start_commands(README.read_text())
    procs = [
        subprocess.Popen(check_command(c), cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE, text=True)
        for c in commands
    ]
    failures = []
    for command, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        text = shlex.join(command)
        if proc.returncode != 0:
            failures.append(f"{text}: exit {proc.returncode}\n{stderr[-2000:]}")
        elif command[0] == "make":
            failures += [f"{text}: {p}" for p in check_dry_run(stdout)]
        elif not stdout.strip():
            failures.append(f"{text}: --cfg job printed no configuration")
    assert not failures, "\n".join(failures)


def named_paths(text: str) -> set[str]:
    """The repository paths a text names, less those given as outputs (``--out FILE``)."""
    return {
        m.group(1).rstrip(".")
        for m in REPO_PATH.finditer(text)
        if not re.search(r"(--out|--json|--profile|>)\s*$", text[: m.start()])
    }


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_fenced(path.read_text())
    return {github_anchor(m.group(2)) for line in prose if (m := HEADING.match(line))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link reaches an existing file, and its #anchor a heading there."""
    _, prose = split_fenced(doc.read_text())
    broken = []
    for target in LINK.findall("\n".join(prose)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_modules_and_make_targets_exist(doc: Path) -> None:
    """The repository paths, ``python -m`` modules and make targets a page names exist."""
    text = doc.read_text()
    missing = []
    for name in sorted(named_paths(text)):
        if not (any(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()):
            missing.append(f"path {name}")
    missing += [
        f"module {m}" for m in sorted(set(PYTHON_MODULE.findall(text))) if not module_exists(m)
    ]
    targets = makefile_targets()
    missing += [
        f"make target {t}" for t in sorted(set(MAKE_COMMAND.findall(text))) if t not in targets
    ]
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist:\n" + "\n".join(missing)


# the config each entry point composes (its @hydra.main config_name)
ENTRY_CONFIGS = {
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "export": "export",
    "analyze": "analyze",
    "ablation": "table4",
}
# configs a page tells the reader to write before running its commands
CONFIGS_TO_WRITE = {"model=ssd_mynet"}
PLACEHOLDER = re.compile(r"<([^<>]+)>")
SHELL_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\}|\([^)]*\))")


def documented_commands(text: str) -> list[str]:
    """The ``python src/<entry>.py ...`` commands of a page: code spans and shell-block lines,
    continuations joined, anything after a ``;`` dropped."""
    spans = [m.group(1) for m in re.finditer(r"`(python3? src/\w+\.py[^`]*)`", text)]
    blocks, _ = split_fenced(text)
    lines = [
        line[line.index("python") :]
        for info, block in blocks
        if info.split()[:1] in (["bash"], ["sh"], ["shell"], ["console"])
        for line in "\n".join(block).replace("\\\n", " ").splitlines()
        if re.search(r"python3? src/\w+\.py", line)
    ]
    return [" ".join(command.split(";")[0].split()) for command in spans + lines]


def composable_overrides(command: str) -> tuple[str, list[str]]:
    """The config and overrides a documented command composes, its placeholders settled: an
    override whose key or value is only a placeholder (``data=<name>``, ``model=$m``) or a bare
    placeholder (``<the same overrides>``, ``...``) is the reader's to fill in and is dropped; a
    placeholder inside a value (``<run>/checkpoints/last.ckpt``) becomes a word; an optional
    ``[key=value]`` counts; a sweep (``-m``, ``a,b``) composes its first value."""
    command = PLACEHOLDER.sub(lambda m: "<" + re.sub(r"\W+", "_", m.group(1)) + ">", command)
    words = shlex.split(command, comments=True)
    entry = re.fullmatch(r"src/(\w+)\.py", words[1])
    assert entry and entry.group(1) in ENTRY_CONFIGS, f"{command}: not an entry point"
    sweep = "-m" in words
    overrides = []
    for word in words[2:]:
        word = re.sub(r"^\[(\S+=\S*)\]$", r"\1", word)
        key, equals, value = word.partition("=")
        if word.startswith("-") or word in ("job", "...") or not equals:
            continue  # --cfg job, -m, ..., a bare placeholder
        settled_later = [PLACEHOLDER.fullmatch(key), PLACEHOLDER.fullmatch(value), value == "..."]
        if any(settled_later) or SHELL_VARIABLE.fullmatch(value):
            continue
        value = SHELL_VARIABLE.sub("0", PLACEHOLDER.sub(r"\1", value)).replace("...", "x")
        if sweep and re.fullmatch(r"[\w./-]+(,[\w./-]+)+", value):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return ENTRY_CONFIGS[entry.group(1)], overrides


def test_placeholders_of_documented_commands_are_settled() -> None:
    text = """run `python src/analyze.py run=<run dir> baseline=<baseline run dir>` and
```bash
for s in 0 1; do python src/eval.py ckpt_path=logs/seed_$s/last.ckpt \\
    +data.root=<root>/x [data.batch_size=8]; done
python src/train.py -m model=ssd321,dssd321 data=<name> <key>=<a>,<b> <the same overrides> --cfg job
```"""
    commands = documented_commands(text)
    assert [composable_overrides(c) for c in commands] == [
        ("analyze", []),
        ("eval", ["ckpt_path=logs/seed_0/last.ckpt", "+data.root=root/x", "data.batch_size=8"]),
        ("train", ["model=ssd321"]),
    ]


def test_documented_commands_compose() -> None:
    """Every ``python src/<entry>.py`` command of the documentation composes: its config groups,
    options and keys exist (a key a config lacks needs ``+``), placeholders aside."""
    from hydra import compose, initialize_config_dir

    commands = [(doc, c) for doc in DOCS for c in documented_commands(doc.read_text())]
    assert len(commands) >= 60, f"only {len(commands)} commands found in the documentation"
    failures = []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for doc, command in commands:
            config, overrides = composable_overrides(command)
            overrides = [o for o in overrides if o not in CONFIGS_TO_WRITE]
            try:
                compose(config, overrides=overrides)
            except Exception as err:  # Hydra's composition errors have no common base
                reason = str(err).strip().splitlines()[0]
                failures.append(f"{doc.relative_to(ROOT)}: {command}\n    {reason}")
    assert not failures, "\n".join(failures)
