"""The README's Python API example runs as written and does what it claims."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its API example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    before, after = namespace["before"], namespace["after"]
    assert before["UA"] < 5 and after["UA"] > 90  # the threes are forgotten
    assert after["TA"] > before["TA"] - 10  # the other digits are kept
    assert "UA" in capsys.readouterr().out


def test_readme_shows_the_two_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo")
    assert first_block.splitlines()[1].startswith("make test")
