"""The documentation says what the code does. In README.md, docs/*.md and studies/README.md:

- every command shown (a line of a code block, or inline code) that starts with `python`, `torchrun`, `sbatch`,
  `./scripts/`, `./studies/` or one of the project's commands names a script or module that exists, and the repository
  files it is given (`--config cfgs/...`) exist; after `git checkout REV &&` they must exist at REV; so does a
  repository path shown alone (`cfgs/grids/paper.yaml`);
- every --flag given to a command with an argparse parser (train.py, eval.py, predict.py, sweep.py,
  scripts/import_published.py, python -m datasets.prepare / datasets.check, ...) is one of that parser's options;
- every `Section.key` in code is a key of the config schema, or a removed or renamed one (utils/run/config.py) in a
  paragraph that says so (or a key of the published YAMLs that the text says is ignored);
- every relative link reaches a file, and its heading when it names one (#anchor).

Nothing is run: a parser is taken from its command's main() at the moment it would parse. A failure lists every
problem of the file as `file:line: what is wrong`.
"""
import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from utils.errors import closest
from utils.run import config

REPO = Path(__file__).resolve().parents[1]

# The project's commands whose options are checked against their parser: a script path or a `python -m` module.
PARSED = ("train.py", "eval.py", "predict.py", "sweep.py", "check_gpu.py", "scripts/import_published.py",
          "scripts/dev/bench.py", "scripts/dev/epoch_overhead.py", "scripts/dev/readme_figures.py",
          "scripts/dev/capture_noise.py", "datasets.prepare", "datasets.check",
          "datasets.prepare.demo", "datasets.prepare.fashion_mnist", "studies.rar.analysis",
          "studies.scores.analysis", "studies.length.analysis", "studies.ensemble_size.analysis")
WRAPPERS = {"scripts/dev/bench.sh": "scripts/dev/bench.py",  # shell scripts that pass their arguments on
            "scripts/check_gpu.sh": "check_gpu.py"}
COMMANDS = ("train.py", "eval.py", "predict.py", "sweep.py")  # also commands when written without `python`
PYTHONS = ("python", "python3")
SCRIPT = re.compile(r"^\./(scripts|studies)/|^(scripts|studies)/\S+\.(sh|sbatch)$")
TRACKED = ("cfgs", "datasets", "docs", "images", "models", "scripts", "studies", "tests", "utils")  # top-level folders
SEPARATORS = {";", "&&", "||", "|", "&"}
KEYWORDS = {"do", "then", "else", "time", "exec", "!", "done", "fi", "{", "}", "(", ")"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
KEY = re.compile(rf"(?<![\w-])({'|'.join(config.SECTIONS)})\.([A-Za-z_]\w*)")
OVERRIDE = re.compile(r"^([A-Z]\w*)\.(\w+)=")
SAYS_REMOVED = ("removed", "renamed", "no longer", "became", config.LAST_WITH_REMOVED)
SAYS_IGNORED = ("ignored", "ignores", "lacks", "does not have")
PLACEHOLDER = re.compile(r"[<>{}$*]|\.\.\.|^[A-Z][A-Z0-9_]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


# ---------------------------------------------------------------- reading markdown

@dataclass(frozen=True)
class Code:
    text: str  # one command line: a code block's line (continuations joined) or a code span (line breaks as spaces)
    line: int  # where it starts, from 1
    context: str  # the text that may say a key is removed or ignored: the code line, or the span's row or paragraph


@dataclass(frozen=True)
class Markdown:
    code: list  # Code
    links: list  # (line, target)
    anchors: set  # the #anchors its headings (and <a name>) give


def blocks(lines):
    """("fence" | "text", first line number, lines): fenced code blocks, and the paragraphs between blank lines."""
    block, start, fence = [], 0, None
    for number, line in enumerate(lines, 1):
        if fence:
            if re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                yield "fence", start, block
                block, fence = [], None
            else:
                block.append(line)
            continue
        opening = FENCE.match(line)
        if opening or not line.strip():
            if block:
                yield "text", start, block
            block, start, fence = [], number + 1, opening.group(1) if opening else None
            continue
        if not block:
            start = number
        block.append(line)
    if block:
        yield ("fence" if fence else "text"), start, block


def code_lines(lines, start):
    """The lines of a code block as Code: a line ending in a backslash continues on the next."""
    pending, first = "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = pending + line
        pending = ""
        yield Code(text.strip(), first, text)
    if pending:
        yield Code(pending.strip(), first, pending)


def read_markdown(path) -> Markdown:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    code, links, headings = [], [], []
    for kind, start, block in blocks(lines):
        if kind == "fence":
            code += code_lines(block, start)
            continue
        if all(line.startswith("    ") for line in block):  # an indented code block
            code += code_lines([line[4:] for line in block], start)
            continue
        text = "\n".join(block)
        prose = list(text)
        for span in SPAN.finditer(text):
            line = start + text.count("\n", 0, span.start())
            row = block[line - start]
            context = row if row.lstrip().startswith("|") else text
            code.append(Code(" ".join(span.group(2).split()), line, context))
            prose[span.start():span.end()] = re.sub(r"[^\n]", " ", span.group(0))
        prose = "".join(prose)
        for pattern in (LINK, REFERENCE, HTML_LINK):
            links += [(start + prose.count("\n", 0, match.start()), match.group(1))
                      for match in pattern.finditer(prose)]
        for offset, line in enumerate(block):
            heading = HEADING.match(line)
            if heading:
                headings.append(heading.group(1))
            elif (offset + 1 < len(block) and re.fullmatch(r" {0,3}(=+|-+)\s*", block[offset + 1])
                  and not line.lstrip().startswith(("|", "-", "*"))):
                headings.append(line.strip())  # a setext heading
        headings += [f"<a {name}" for name in ANCHOR.findall(prose)]
    return Markdown(code, links, slugs(headings))


def slugs(headings) -> set:
    """The anchors GitHub gives headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    found, seen = set(), {}
    for heading in headings:
        if heading.startswith("<a "):
            found.add(heading[3:])
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
        text = re.sub(r"<[^>]+>", "", text).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


# ---------------------------------------------------------------- commands

def words_of(text):
    """Shell words of a command line, its comment dropped (a `#` that starts a word, outside quotes)."""
    quote, cut = None, len(text)
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            cut = i
            break
    lexer = shlex.shlex(text[:cut], posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: plain words will do
        return text[:cut].split()


def commands(text):
    """(words, commit) of each simple command in a line: separators split it, `do`, `then` and VAR=value
    prefixes are dropped; a command after `git checkout REV` in the same line runs at REV (else commit is None)."""
    segments, segment = [], []
    for word in words_of(text):
        if word in SEPARATORS:
            segments.append(segment)
            segment = []
        elif word.endswith(";") and len(word) > 1:
            segments.append([*segment, word[:-1]])
            segment = []
        else:
            segment.append(word)
    segments.append(segment)
    commit = None
    for words in segments:
        while words and (words[0] in KEYWORDS or ASSIGNMENT.match(words[0])):
            words = words[1:]
        if words[:2] == ["git", "checkout"] and len(words) > 2:
            commit = words[-1]
        elif words:
            yield words, commit


def is_placeholder(word) -> bool:
    return bool(PLACEHOLDER.search(word))


def repository_path(word) -> str:
    return word[2:] if word.startswith("./") else word


@functools.lru_cache(maxsize=None)
def has_commit(commit) -> bool:
    """Whether this checkout's git history holds `commit` (a shallow or exported copy may not: then nothing at it
    is checked)."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def exists(path, commit=None) -> bool:
    path = repository_path(path).rstrip("/")
    if commit is None:
        return (REPO / path).exists()
    if not has_commit(commit):
        return True
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}:{path}"],
                          capture_output=True).returncode == 0


def where(commit) -> str:
    return "" if commit is None else f" at commit {commit}"


def module_file(name, commit=None):
    """The repository file `python -m name` runs, or None when the module is not the repository's."""
    base = name.replace(".", "/")
    if not exists(name.split(".")[0], commit) and not exists(f"{name.split('.')[0]}.py", commit):
        return None
    for candidate in (f"{base}.py", f"{base}/__main__.py"):
        if exists(candidate, commit):
            return candidate
    return f"{base}.py"


class _Parsing(BaseException):
    """Raised where a command's main() would parse its arguments: carries the parser (BaseException, so that no
    command's error handling catches it)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


@functools.lru_cache(maxsize=None)
def entry_point(name):
    """The module of a script path (loaded from its file) or of a `python -m` name (its __main__ for a package)."""
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_docs_{Path(name).stem}", REPO / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(f"{name}.__main__" if (REPO / name.replace(".", "/")).is_dir() else name)


def parser_of(name, argv) -> argparse.ArgumentParser:
    """The parser the command `name` builds for these arguments (datasets.prepare picks one by its first), taken
    from its main() the moment it would parse: nothing of the command runs."""
    def caught(parser, *args, **kwargs):
        raise _Parsing(parser)

    module = entry_point(name)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught):
        try:
            module.main(list(argv))
        except _Parsing as parsing:
            return parsing.parser
    raise AssertionError(f"{name}: main() returned without parsing its arguments")


def option_words(words):
    """The option words (--flag, -f) of a command's arguments, without values or the brackets of [--optional]."""
    for word in words:
        if word == "--":
            return
        word = word.strip("[]()")
        if re.match(r"^--?[A-Za-z]", word):
            yield word.partition("=")[0]


def check_options(name, shown, argv) -> list:
    parser = parser_of(name, argv)
    valid = parser._option_string_actions
    return [f"{option} is not an option of {shown} (its options: {', '.join(sorted(valid))})"
            for option in option_words(argv) if option not in valid]


def check_paths(words, commit) -> list:
    """Repository files among the words (cfgs/..., `--grid=studies/...`) must exist."""
    problems = []
    for word in words:
        value = word.strip("[]").partition("=")[2] if word.startswith("-") else word.strip("[]")
        path = repository_path(value)
        if path.split("/")[0] in TRACKED and "/" in path and not is_placeholder(path) and not exists(path, commit):
            problems.append(f"{value} does not exist{where(commit)}")
    return problems


def check_arguments(words, commit) -> list:
    """A command's arguments: its repository files exist, its overrides name a config section."""
    problems = check_paths(words, commit)
    for word in words:
        override = OVERRIDE.match(word)
        if override and override.group(1) not in config.SECTIONS:
            problems.append(f"{word}: {override.group(1)} is not a config section ({', '.join(config.SECTIONS)})")
    return problems


def check_script(script, argv, commit, shown=None) -> list:
    """A Python script run as a file, then its arguments."""
    path = repository_path(script)
    if is_placeholder(path):
        return []
    if not exists(path, commit):
        return [f"{script} does not exist{where(commit)}"]
    problems = check_arguments(argv, commit)
    if path in PARSED and commit is None:
        problems += check_options(path, shown or path, argv)
    return problems


def check_module(name, argv, commit) -> list:
    """`python -m name argv`: the repository's module (or an installed one), then its arguments."""
    if is_placeholder(name):
        return []
    if name == "torch.distributed.run":
        return check_torchrun(argv, commit)
    path = module_file(name, commit)
    if path is None:
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(name) is not None:
                return []
        return [f"python -m {name}: no such module{where(commit)}"]
    if not exists(path, commit):
        return [f"python -m {name}: no {path}{where(commit)}"]
    problems = check_arguments(argv, commit)
    if name in PARSED and commit is None:
        problems += check_options(name, f"python -m {name}", argv)
    return problems


def check_python(argv, commit) -> list:
    while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c", "-"):
        argv = argv[1:]  # interpreter options (-u, -O, ...)
    if not argv or argv[0] in ("-c", "-"):
        return []
    if argv[0] == "-m":
        return check_module(argv[1], argv[2:], commit) if len(argv) > 1 else ["python -m without a module"]
    return check_script(argv[0], argv[1:], commit)


def check_torchrun(argv, commit) -> list:
    from torch.distributed import run as torchrun
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = torchrun.get_args_parser().parse_args(argv)
    except SystemExit:
        return [f"torchrun cannot parse it: {stderr.getvalue().strip().splitlines()[-1]}"]
    if parsed.module:
        return check_module(parsed.training_script, parsed.training_script_args, commit)
    return check_script(parsed.training_script, parsed.training_script_args, commit)


def check_sbatch(argv, commit) -> list:
    while argv and argv[0].startswith("-"):  # sbatch's own options; a short one takes the next word
        argv = argv[2:] if re.fullmatch(r"-[A-Za-z]", argv[0]) else argv[1:]
    if not argv or is_placeholder(argv[0]):
        return []
    if not exists(argv[0], commit):
        return [f"{argv[0]} does not exist{where(commit)}"]
    return check_arguments(argv[1:], commit)


def check_shell_script(script, argv, commit) -> list:
    path = repository_path(script)
    if is_placeholder(path):
        return []
    if not exists(path, commit):
        return [f"{script} does not exist{where(commit)}"]
    if commit is None and script.startswith("./") and not os.access(REPO / path, os.X_OK):
        return [f"{script} is not executable (git update-index --chmod=+x {path})"]
    problems = check_arguments(argv, commit)
    if path in WRAPPERS and commit is None:
        problems += check_options(WRAPPERS[path], path, argv)
    return problems


def check_command(words, commit) -> list:
    head, argv = words[0], words[1:]
    if head in PYTHONS:
        return check_python(argv, commit)
    if head == "torchrun":
        return check_torchrun(argv, commit)
    if head == "sbatch":
        return check_sbatch(argv, commit)
    if SCRIPT.match(head):
        check = check_script if head.endswith(".py") else check_shell_script
        return check(head, argv, commit)
    if head in COMMANDS:
        return check_script(head, argv, commit)
    return []


# ---------------------------------------------------------------- the checks of one file

def name_of(path) -> str:
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def command_problems(path) -> list:
    found = []
    for code in read_markdown(path).code:
        if not re.search(r"\s", code.text) and not SCRIPT.match(code.text):  # a lone path: `cfgs/grids/paper.yaml`
            found += [f"{name_of(path)}:{code.line}: {problem}" for problem in check_paths([code.text], None)]
            continue
        for words, commit in commands(code.text):
            found += [f"{name_of(path)}:{code.line}: `{' '.join(words)}`: {problem}"
                      for problem in check_command(words, commit)]
    return found


def key_problems(path) -> list:
    schema = {f"{section}.{field.name}" for section, kind in config.SECTIONS.items()
              for field in config.fields(kind)}
    documented = {*config.REMOVED, *config.RENAMED}
    found = []
    for code in read_markdown(path).code:
        context = code.context.lower()
        for match in KEY.finditer(code.text):
            key = match.group(0)
            if key in schema:
                continue
            if key in documented and any(word.lower() in context for word in SAYS_REMOVED):
                continue
            if key not in documented and any(word in context for word in SAYS_IGNORED):
                continue
            if key in documented:
                found.append(f"{name_of(path)}:{code.line}: `{key}` is a removed or renamed key, in a paragraph "
                             f"that does not say so (with one of: {', '.join(SAYS_REMOVED)})")
                continue
            near = closest(key, sorted(schema))
            found.append(f"{name_of(path)}:{code.line}: `{key}` is not a key of the config schema "
                         f"(utils/run/config.py)" + (f"; did you mean `{near}`?" if near else ""))
    return found


def link_problems(path) -> list:
    path = Path(path)
    found = []
    for line, target in read_markdown(path).links:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # https:, mailto:, ...
        file, _, anchor = urllib.parse.unquote(target).partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            found.append(f"{name_of(path)}:{line}: link {target}: {name_of(linked)} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in read_markdown(linked).anchors:
            found.append(f"{name_of(path)}:{line}: link {target}: {name_of(linked)} has no heading #{anchor}")
    return found


def documents():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "studies" / "README.md"]


def report(problems) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("path", documents(), ids=name_of)
def test_commands_name_existing_files_and_options(path):
    assert path.is_file(), f"{name_of(path)} is missing"
    problems = command_problems(path)
    assert not problems, report(problems)


@pytest.mark.parametrize("path", documents(), ids=name_of)
def test_config_keys_are_keys_of_the_schema(path):
    assert path.is_file(), f"{name_of(path)} is missing"
    problems = key_problems(path)
    assert not problems, report(problems)


@pytest.mark.parametrize("path", documents(), ids=name_of)
def test_relative_links_reach_their_files(path):
    assert path.is_file(), f"{name_of(path)} is missing"
    problems = link_problems(path)
    assert not problems, report(problems)


@pytest.mark.parametrize("name", PARSED)
def test_every_parsed_command_gives_its_parser(name):
    """The checker reaches each listed command's parser (a command that parses elsewhere fails here, not silently)."""
    assert isinstance(parser_of(name, []), argparse.ArgumentParser)


def test_datasets_prepare_fmnist_is_checked_against_its_own_parser():
    assert "--class" in parser_of("datasets.prepare", ["fmnist"])._option_string_actions
    assert "--class" not in parser_of("datasets.prepare", ["rsna"])._option_string_actions


SAMPLE = """# A guide

Train with `python train.py --config cfgs/RSNA_AE.yaml Solver.num_epoch=3`.

```bash
python eval.py --config cfgs/RSNA_AE.yaml --fast Solver.lrr=1   # two mistakes
for C in 4 6; do python -m datasets.prepare fmnist --class $C --out ./data [--anomalies local]; done
torchrun --nproc_per_node=2 sweep.py --grid cfgs/grids/nowhere.yaml --cells 0-3
sbatch --array=0-3 scripts/slurm_grid.sbatch cfgs/grids/paper.yaml Slover.lr=1
./scripts/nowhere.sh
```

`Model.repulsion` was removed at commit 81a2410.

`Solver.spread` is still here.

Keys the published YAMLs hold that this project lacks (`Exp.gpu`) are ignored.

| key | meaning |
|---|---|
| `Exp.fast` | renamed: `Exp.cache_seniors` and `Exp.cuda_graph` |

See [the data](data.md), [a heading](#a-guide), [no heading](#nowhere) and [nothing](missing.md); `cfgs/gone.yaml`.

    git checkout 81a2410 && ./scripts/rar_study.sh && python scripts/never_there.py
"""


def test_the_checks_find_each_kind_of_mistake_and_name_its_line(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text(SAMPLE)
    (tmp_path / "data.md").write_text("# Data\n")
    found = command_problems(guide)
    expected = [f"{guide}:6: `python eval.py --config cfgs/RSNA_AE.yaml --fast Solver.lrr=1`: --fast is not an "
                "option of eval.py (its options: ",
                f"{guide}:8: `torchrun --nproc_per_node=2 sweep.py --grid cfgs/grids/nowhere.yaml --cells 0-3`: "
                "cfgs/grids/nowhere.yaml does not exist",
                f"{guide}:9: `sbatch --array=0-3 scripts/slurm_grid.sbatch cfgs/grids/paper.yaml Slover.lr=1`: "
                "Slover.lr=1: Slover is not a config section (Exp, Model, Data, Solver)",
                f"{guide}:10: `./scripts/nowhere.sh`: ./scripts/nowhere.sh does not exist",
                f"{guide}:23: cfgs/gone.yaml does not exist"]
    if has_commit(config.LAST_WITH_REMOVED):  # checked at that commit: the script was there, this file never was
        expected.append(f"{guide}:25: `python scripts/never_there.py`: scripts/never_there.py does not exist at "
                        "commit 81a2410")
    assert len(found) == len(expected) and all(p.startswith(e) for p, e in zip(found, expected)), found
    assert key_problems(guide) == [
        f"{guide}:6: `Solver.lrr` is not a key of the config schema (utils/run/config.py); did you mean `Solver.lr`?",
        f"{guide}:15: `Solver.spread` is a removed or renamed key, in a paragraph that does not say so (with one "
        "of: removed, renamed, no longer, became, 81a2410)"]
    assert link_problems(guide) == [f"{guide}:23: link #nowhere: {guide} has no heading #nowhere",
                                    f"{guide}:23: link missing.md: {tmp_path / 'missing.md'} does not exist"]


def test_commands_are_split_at_separators_loops_and_a_checkout():
    assert list(commands("for C in 4 6 9; do python -m datasets.prepare fmnist --class $C; done  # [--seed S]")) == \
        [(["for", "C", "in", "4", "6", "9"], None),
         (["python", "-m", "datasets.prepare", "fmnist", "--class", "$C"], None)]
    assert list(commands('OMP_NUM_THREADS=1 GRIDS="a b" ./scripts/test.sh -k cka')) == \
        [(["./scripts/test.sh", "-k", "cka"], None)]
    assert list(commands("git checkout abc && ./x.sh | tee log")) == [(["./x.sh"], "abc"), (["tee", "log"], "abc")]
    assert list(option_words(["--split", "FILE|seeded]", "[--allow-missing]", "--fpr=0.05", "-k", "x-y"])) == \
        ["--split", "--allow-missing", "--fpr", "-k"]


def test_an_inline_command_may_break_across_lines(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("Several nodes: `torchrun --nnodes=2\n--nproc_per_node=4 sweep.py --grid x.yaml --bogus`.\n")
    assert [p.split(": ", 1)[0] for p in command_problems(guide)] == [f"{guide}:1"]
    assert "--bogus is not an option of sweep.py" in command_problems(guide)[0]
