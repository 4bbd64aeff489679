"""`make test` sets up the system tools the tests run (scripts/system-tools.sh): through apt as root,
else one line naming the packages; CI installs nothing behind the README's back.

The script runs here on a PATH holding only stand-ins (`id`, `apt-get` and the tools), so each case
is tried without uninstalling anything from this machine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.system_tools import require_tool, tool_table

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "system-tools.sh"
# What the stand-in apt-get "installs": the command each Debian package brings.
BRINGS = {
    "prometheus": "promtool",
    "openssl": "openssl",
    "chromium": "chromium",
    "chromium-driver": "chromedriver",
}
BROWSER = {"chromium", "chromedriver"}  # there in the tests below that are about the others


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run_script(
    tmp_path: Path, *, present: set[str], uid: int = 1000, apt: bool = True, apt_brings: bool = True
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The script on a PATH of stand-ins: the tools in `present`, `id -u` printing `uid`, and an
    apt-get that logs its arguments (and, with `apt_brings`, puts the packages' commands on PATH)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in present:
        _executable(bin_dir / tool, "exit 0\n")
    _executable(bin_dir / "id", f"echo {uid}\n")
    if apt:
        creates = "".join(
            f'  [ "$p" = {package} ] && printf "#!/bin/sh\\n" > {bin_dir / command} '
            f"&& /bin/chmod +x {bin_dir / command}\n"
            for package, command in BRINGS.items()
        )
        _executable(
            bin_dir / "apt-get",
            f'echo "$*" >> {log}\n'
            + (f'for p in "$@"; do\n{creates}done\n' if apt_brings else "")
            + "exit 0\n",
        )
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
        timeout=60, cwd=ROOT,
    )  # fmt: skip
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def one_line(result: subprocess.CompletedProcess) -> str:
    assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
    return result.stderr.strip()


def test_with_every_tool_there_it_installs_nothing(tmp_path):
    result, calls = run_script(tmp_path, present=set(tool_table()), uid=0)
    assert (result.returncode, result.stderr, calls) == (0, "", [])


def test_as_a_user_a_missing_tool_stops_it_with_one_line_naming_the_package(tmp_path):
    result, calls = run_script(tmp_path, present=set(tool_table()) - {"promtool"})
    line = one_line(result)
    assert "promtool" in line and "apt-get install prometheus" in line and calls == []


def test_as_root_it_installs_what_is_missing_through_apt(tmp_path):
    result, calls = run_script(tmp_path, present={"kubectl", *BROWSER}, uid=0)
    assert result.returncode == 0, result.stderr
    assert calls == [
        "update -qq",
        "install -y -qq --no-install-recommends prometheus openssl",
    ]


def test_the_browser_of_the_explorer_tests_comes_from_debian(tmp_path):
    result, calls = run_script(tmp_path, present={"kubectl", "promtool", "openssl"}, uid=0)
    assert result.returncode == 0, result.stderr
    assert calls[-1] == "install -y -qq --no-install-recommends chromium chromium-driver"


def test_as_root_without_apt_it_stops_with_one_line(tmp_path):
    result, _ = run_script(tmp_path, present={"kubectl", "openssl", *BROWSER}, uid=0, apt=False)
    assert "apt-get install prometheus" in one_line(result)


def test_apt_that_leaves_the_tool_missing_is_a_failure_not_a_pass(tmp_path):
    result, calls = run_script(
        tmp_path, present={"kubectl", "openssl", *BROWSER}, uid=0, apt_brings=False
    )
    assert result.returncode == 1 and len(calls) == 2
    assert "promtool is still not on PATH" in result.stderr.splitlines()[-1]


def test_a_tool_without_a_usable_debian_package_is_named_with_where_to_get_it(tmp_path):
    result, calls = run_script(tmp_path, present={"promtool", "openssl", *BROWSER}, uid=0)
    line = one_line(result)
    assert "kubectl is missing" in line and "pkgs.k8s.io" in line and calls == []


def test_every_tool_a_test_requires_is_in_the_table():
    required = {
        name
        for path in (ROOT / "tests").glob("*.py")
        for call in re.findall(r"require_tool\(([^)]*)\)", path.read_text(encoding="utf-8"))
        for name in re.findall(r'"([\w.-]+)"', call)[:1]
    }
    assert required and required <= set(tool_table()), required - set(tool_table())


def test_make_test_sets_up_the_tools_and_ci_installs_nothing_itself():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: system-tools\b", makefile, re.M)
    assert re.search(r"^validate-k8s: system-tools\b", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in commands if re.search(r"\bapt(-get)?\b|\bpip\b", line)]


def test_a_missing_tool_fails_a_test_under_ci_and_never_skips_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true .* promtool .*prometheus"):
        require_tool("promtool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Debian package prometheus"):
        require_tool("promtool")
