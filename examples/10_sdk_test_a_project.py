"""The task agents do most: create a sandbox, upload a project, run its tests, read a file
the tests wrote, delete the sandbox. docs/sdk.md counts these lines beside E2B's.

    PETRI_URL=http://127.0.0.1:8000 python examples/10_sdk_test_a_project.py
"""

import tempfile
from pathlib import Path

# --- a small project on disk (what an agent wrote) ------------------------------------------
project = Path(tempfile.mkdtemp()) / "project"
(project / "tests").mkdir(parents=True)
(project / "conftest.py").write_text("")
(project / "calc.py").write_text("def add(a, b):\n    return a + b\n")
(project / "tests" / "test_calc.py").write_text(
    "import pathlib\nfrom calc import add\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n"
    "    pathlib.Path('out').mkdir(exist_ok=True)\n"
    "    pathlib.Path('out/result.txt').write_text('add works')\n"
)

# --- the task: 6 lines --------------------------------------------------------------------
from petri_sdk import Sandbox  # noqa: E402

with Sandbox.create("python") as sb:  # PETRI_URL / PETRI_API_KEY; deleted when the block ends
    sb.files.upload_dir(project)
    result = sb.run_tests()
    print(result.exit_code, result.stdout)
    print(sb.files.read("out/result.txt"))
# ------------------------------------------------------------------------------------------

assert result.exit_code == 0, result.stdout + result.stderr
if result.tests is not None:  # the parsed report (test mode)
    print(f"passed {result.tests.passed}, failed {result.tests.failed}")
