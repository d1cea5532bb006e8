"""mkdocs hooks. `<!-- help: SCRIPT -->` on a page becomes that script's `python SCRIPT --help`, run at build time,
so the flag lists in the docs are the scripts' own and cannot drift; `<!-- include: README.md -->` (the home page)
becomes the README, its links into docs/ and benchmarks/results/ made relative to the site."""

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- help: (\S+\.py) -->")
INCLUDE = re.compile(r"<!-- include: (\S+\.md) -->")
HELP_COLUMNS = 76  # the --help box fits the page's content column (wider, its right side scrolled out of view)


@cache
def script_help(script: str) -> str:
    env = {**os.environ, "COLUMNS": str(HELP_COLUMNS), "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"python {script} --help failed: {done.stderr.strip()[-500:]}")
    return done.stdout.rstrip()


def included(name: str) -> str:
    text = (ROOT / name).read_text()
    return text.replace("](docs/", "](").replace("](benchmarks/results/", "](results/")


def on_page_markdown(markdown, page, config, files):
    markdown = INCLUDE.sub(lambda m: included(m.group(1)), markdown)
    return MARKER.sub(lambda m: f"```text\n$ python {m.group(1)} --help\n{script_help(m.group(1))}\n```", markdown)
