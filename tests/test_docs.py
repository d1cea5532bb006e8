"""The documentation: the mkdocs site builds with no warning (a broken link, anchor or missing page fails), and what
the pages say about each script's flags is what the script's Args says (names and defaults in the flag tables,
every flag the prose names), so the pages cannot drift from `--help`."""

import dataclasses
import importlib
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ["ppo_discrete", "ppo_continuous", "ppo_atari", "ppo_lstm", "ppo_rlhf", "trpo_baseline", "a2c_baseline"]
# Flags of other programs that the pages' prose names (torchrun, the harness): not the script's.
OTHER_PROGRAMS = {
    "--help",
    "--flag",
    "--no-flag",
    "--nproc-per-node",
    "--preset",
    "--script-args",
    "--reference",
    "--slurm",
    "--rounds",
    "--out",
    "--make-model",  # benchmarks/rlhf_speed.py
    "--index-url",  # pip
}


def args_fields(script: str) -> dict:
    """{--flag: default} of a script's Args, booleans also as --no-flag."""
    module = importlib.import_module(script)
    flags = {}
    for f in dataclasses.fields(module.Args):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flags["--" + f.name.replace("_", "-")] = default
        if isinstance(default, bool):
            flags["--no-" + f.name.replace("_", "-")] = not default
    return flags


def prose(page: str) -> str:
    """The page without its code blocks and without lines that run another program."""
    text = re.sub(r"```.*?```", "", page, flags=re.S)
    return "\n".join(line for line in text.splitlines() if "python -m " not in line and "torchrun" not in line)


def documented_default(cell: str):
    """A flag table's default cell as a Python value, or ... when it states no single value."""
    cell = cell.strip().strip("`")
    if cell in ("on", "off"):
        return cell == "on"
    if cell in ("None", "none"):
        return None
    try:
        return float(cell)
    except ValueError:
        return cell if cell and " " not in cell else ...


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_scripts_page_names_only_its_flags_with_their_defaults(script):
    page = (ROOT / "docs" / f"{script}.md").read_text()
    flags = args_fields(script)
    assert f"<!-- help: {script}.py -->" in page  # the generated list of every flag (docs/hooks.py)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", prose(page)))
    unknown = sorted(named - set(flags) - OTHER_PROGRAMS)
    assert not unknown, f"docs/{script}.md names flags {script}.py does not have: {unknown}"
    checked = 0
    for row in re.findall(r"^\| (`--[^|]+)\|([^|]*)\|", page, flags=re.M):
        names = re.findall(r"`(--[a-z0-9-]+)`", row[0])
        defaults = [documented_default(d) for d in row[1].split(" / ")]
        if len(defaults) != len(names):
            defaults = [documented_default(row[1])] * len(names)
        for name, documented in zip(names, defaults):
            assert name in flags, f"docs/{script}.md's table: {script}.py has no {name}"
            actual = flags[name]
            if documented is ... or (isinstance(documented, str) and not isinstance(actual, str)):
                continue
            checked += 1
            if isinstance(documented, float) and not isinstance(actual, bool):
                assert actual == pytest.approx(documented), f"docs/{script}.md: {name} {documented}, Args {actual}"
            else:
                assert actual == documented, f"docs/{script}.md: {name} {documented!r}, Args {actual!r}"
    assert checked >= 1 or script == "ppo_rlhf"


def test_the_readme_names_only_flags_some_script_has():
    flags = set().union(*(args_fields(s) for s in SCRIPTS))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", prose((ROOT / "README.md").read_text())))
    assert not sorted(named - flags - OTHER_PROGRAMS)


def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = (tmp_path / "site" / "ppo_atari" / "index.html").read_text()
    assert "--repeat-action-probability" in built and "--env-backend" in built  # the --help block is there
    assert (tmp_path / "site" / "results" / "rlhf" / "kl_penalty.png").exists()


@pytest.mark.parametrize("script", ["ppo_discrete", "ppo_continuous", "ppo_atari", "ppo_lstm"])
def test_what_the_pages_say_compile_compiles_is_what_compile_functions_compiles(script):
    """compile_functions hands the update the compiled loss (ppo_loss) and leaves the clip, Adam and the gradients'
    all-reduce eager: no page may say that --compile compiles the whole update or holds the all-reduce."""
    import torch

    module = importlib.import_module(script)
    with torch._dynamo.config.patch(specialize_float=False):  # compile_functions sets it; leave the suite's alone
        _, update = module.compile_functions(module.Args(compile=True), torch.device("cpu"))
    assert update.func is module.minibatch_step and update.keywords["loss_fn"]._torchdynamo_orig_callable is (
        module.ppo_loss
    )
    text = " ".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    text = re.sub(r"\s+", " ", text)
    for wrong in ("whole minibatch update", "all-reduce is inside the compiled", "compiles the whole"):
        assert wrong not in text, wrong
    page = re.sub(r"\s+", " ", (ROOT / "docs" / f"{script}.md").read_text())
    assert "`ppo_loss`" in page and "`--compile`" in page


def test_the_help_box_and_the_rlhf_examples_fit_the_content_column():
    """Wider than the content column, a code block's right side is scrolled out of view (the --help box and the first
    block of ppo_rlhf.md were)."""
    sys.path.insert(0, str(ROOT / "docs"))
    import hooks

    for script in SCRIPTS:
        widths = [len(line) for line in hooks.script_help(f"{script}.py").splitlines()]
        assert max(widths) <= hooks.HELP_COLUMNS, script
    text = (ROOT / "docs" / "ppo_rlhf.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks and all(len(line) <= hooks.HELP_COLUMNS for block in blocks for line in block.splitlines())
