"""The documentation site: it builds strictly and offline, its generated flag reference matches the
parsers, its API pages name everything the .proto files declare, and its layout names every module."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.proto_gen.inference import grpc_service_pb2
from server.proto_gen.vae.v1 import vae_pb2

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FLAGS_PAGE = DOCS / "reference" / "flags.md"


def _flag_reference():
    spec = importlib.util.spec_from_file_location(
        "flag_reference", ROOT / "scripts" / "flag_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `project` into `site`, with every HTTP(S) fetch sent to a closed port,
    so a theme or plugin that reaches for the internet fails the build instead of passing here only."""
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",  # Material's banner about MkDocs 2.0, printed on every build
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def copy_project(tmp_path: Path) -> Path:
    """What the site is built from, copied, so a test can break it without touching the checkout."""
    project = tmp_path / "project"
    for name in ("docs", "reports", "scripts"):
        shutil.copytree(ROOT / name, project / name)
    for name in ("mkdocs.yml", "BENCHMARKS.md"):
        shutil.copy(ROOT / name, project / name)
    return project


# ------------------------------------------------------------------------------- flag reference


def test_the_flag_reference_is_what_the_parsers_say_now():
    committed = FLAGS_PAGE.read_text(encoding="utf-8")
    regenerated = _flag_reference().render()
    assert committed == regenerated, (
        "docs/reference/flags.md differs from the commands' parsers: run "
        ".venv/bin/python scripts/flag_reference.py (or make flags) and commit the page"
    )


def _help_texts() -> dict[str, str]:
    """--help of every command and subcommand, as argparse prints it to a user."""
    from client.bench import build_parser as bench
    from client.cli import build_parser as client
    from export.cli import build_parser as export
    from server.process.settings import build_parser as serve
    from training.cli import build_parser as train
    from training.experiments.runner import parser as experiment
    from training.subcommands import SUBCOMMANDS
    from training.subcommands import build_parser as train_subcommands

    calls = {
        "vae-train": (train, []),
        "vae-train experiment": (lambda: experiment("vae-train experiment"), []),
        "vae-export": (export, []),
        "vae-serve": (serve, []),
        "vae-client": (client, []),
        "vae-bench": (bench, []),
    }
    calls |= {f"vae-train {name}": (train_subcommands, [name]) for name in SUBCOMMANDS}
    calls |= {
        f"vae-client {name}": (client, [name])
        for name in ("sample", "encode", "decode", "interpolate", "info")
    }
    texts = {}
    for title, (factory, argv) in calls.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            factory().parse_args([*argv, "--help"])
        texts[title] = out.getvalue()
    return texts


def test_every_flag_and_variable_that_help_prints_is_in_the_reference(monkeypatch):
    for name in [n for n in os.environ if n.startswith("VAE_")]:
        monkeypatch.delenv(name)
    page = FLAGS_PAGE.read_text(encoding="utf-8")
    sections = {
        m[1]: m[2] for m in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    }
    for title, text in _help_texts().items():
        usage = text.split("\n\n", 1)[0]  # argparse's usage: every option, by its first flag
        flags = set(re.findall(r"\[(--[a-z][a-z0-9-]*)", usage)) - {"--help"}
        variables = set(re.findall(r"\[(VAE_[A-Z0-9_]+)\]", text))
        if title == "vae-client info":  # no options of its own: no section
            assert not flags and title not in sections
            continue
        rows = re.findall(r"^\| (.*?) \|", sections.get(title, ""), re.M)
        named = {flag for row in rows for flag in re.findall(r"`(--[a-z0-9-]+)`", row)}
        assert flags and flags <= named, f"{title}: {sorted(flags - named)} not in the reference"
        variables_named = set(re.findall(r"`(VAE_[A-Z0-9_]+)`", sections[title]))
        assert variables <= variables_named, f"{title}: {sorted(variables - variables_named)}"


# ------------------------------------------------------------------------------ the site itself


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The checkout's site, built once for the tests that read it."""
    site = tmp_path_factory.mktemp("docs") / "site"
    return build_site(ROOT, site), site


def test_the_site_builds_strictly_offline_with_search(built):
    result, site = built
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    index = (site / "search" / "search_index.json").read_text(encoding="utf-8")
    for word in ("SampleStream", "VAE_MAX_SAMPLES", "KServe", "prometheus-adapter"):
        assert word in index, f"{word} is not in the search index"
    pages = list(site.rglob("*.html"))
    assert len(pages) > 30
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, page
        for source in re.findall(r'<img [^>]*src="([^"]+)"', html):
            if "://" not in source:
                assert (page.parent / source).resolve().is_file(), f"{page}: {source}"


def test_benchmarks_and_reports_are_published_from_where_they_live(built):
    result, site = built
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "repo" / "BENCHMARKS" / "index.html").is_file()
    for report in (ROOT / "reports").rglob("*.png"):
        assert (site / "repo" / report.relative_to(ROOT)).is_file(), report
    concepts = (site / "concepts" / "vae" / "index.html").read_text(encoding="utf-8")
    assert 'src="../../repo/reports/beta/figures_vs_beta.png"' in concepts


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path):
    project = copy_project(tmp_path)
    (project / "docs" / "orphan.md").write_text("# Orphan\n\nNobody links here.\n")
    result = build_site(project, tmp_path / "site")
    assert result.returncode != 0
    assert "orphan.md" in result.stdout + result.stderr


def test_a_link_to_a_missing_page_or_anchor_fails_the_build(tmp_path):
    project = copy_project(tmp_path)
    page = project / "docs" / "getting-started.md"
    page.write_text(
        page.read_text() + "\n[gone](guide/nowhere.md), [no such part](index.md#nowhere)\n"
    )
    result = build_site(project, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nowhere.md" in output and "#nowhere" in output


def test_a_link_to_a_repository_file_the_site_does_not_publish_fails_the_build(tmp_path):
    project = copy_project(tmp_path)
    page = project / "docs" / "development.md"
    page.write_text(page.read_text() + "\n[the settings](../server/process/settings.py)\n")
    result = build_site(project, tmp_path / "site")
    assert result.returncode != 0
    assert "settings.py" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------- the APIs


def test_the_grpc_page_names_every_rpc_message_field_and_enum_value():
    page = (DOCS / "api" / "grpc.md").read_text(encoding="utf-8")
    file = vae_pb2.DESCRIPTOR
    names = [m.name for s in file.services_by_name.values() for m in s.methods]
    for message in file.message_types_by_name.values():
        names += [message.name, *(f.name for f in message.fields)]
    for enum in file.enum_types_by_name.values():
        names += [enum.name, *(v.name for v in enum.values)]
    missing = sorted({n for n in names if f"`{n}`" not in page})
    assert not missing, f"docs/api/grpc.md does not name {missing} (proto/vae/v1/vae.proto does)"


def test_the_open_inference_page_names_every_method_served():
    page = (DOCS / "api" / "open-inference.md").read_text(encoding="utf-8")
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    missing = [m.name for m in service.methods if f"`{m.name}`" not in page]
    assert not missing, f"docs/api/open-inference.md does not name {missing}"


# ---------------------------------------------------------------------------------- the layout


def _layout_rows() -> dict[str, str]:
    """The Layout table of docs/development.md: `path` -> what the row says it holds."""
    page = (DOCS / "development.md").read_text(encoding="utf-8")
    table = page.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for first, text in re.findall(r"^\| (`[^|]+`) \| (.*) \|$", table, re.M):
        for path in re.findall(r"`([^`]+)`", first):  # "`Dockerfile`, `docker/`": two paths
            rows[path] = text
    return rows


def test_the_layout_names_every_module_of_server_and_nothing_that_is_gone():
    rows = _layout_rows()
    server = ROOT / "server"
    for module in server.rglob("*.py"):
        relative = module.relative_to(server)
        if relative.parts[0] == "proto_gen" or module.name == "__init__.py":
            continue
        package, name = relative.parts[0], relative.with_suffix("").as_posix()
        row, short = (
            (f"server/{package}/", name.removeprefix(package + "/"))
            if len(relative.parts) > 1
            else ("server/", name)
        )
        assert row in rows, f"docs/development.md's layout has no row for {row}"
        assert f"`{short}`" in rows[row], f"the layout's {row} row does not name {short}"
    for row, text in rows.items():
        if not row.startswith("server/"):
            continue
        for named in re.findall(r"`([a-z_0-9/]+)`", text):
            if named in ("server", "export", "client", "torch"):
                continue
            path = ROOT / row / named
            assert path.with_suffix(".py").is_file() or path.is_dir(), f"{row}{named} is gone"


def test_every_top_level_folder_has_a_row_in_the_layout():
    rows = _layout_rows()
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {path.split("/")[0] for path in tracked if "/" in path and not path.startswith(".")}
    listed = {path.rstrip("/") for path in rows}
    assert folders <= listed, f"folders without a row: {sorted(folders - listed)}"
