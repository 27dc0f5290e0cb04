"""Smoke comparison + report on embedded data, and the HTML rendered in headless Chromium."""

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from natgrad import cli
from strict_json import load_file, load_lines

SMOKE = [
    "--workload",
    "digits_mlp",
    "--optimizers",
    "sgd,momentum,adam",
    "--trials",
    "3",
    "--steps",
    "30",
    "--seeds",
    "2",
    "--bootstrap",
    "200",
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    assert cli.main(["compare", *SMOKE, "--out", str(folder)]) == 0
    assert cli.main(["report", str(folder)]) == 0
    return folder


def test_every_file_of_the_lab_is_standard_json(comparison):
    """No NaN/Infinity token (a re-run's step-0 train loss is missing: null with a reason)."""
    written = list(comparison.rglob("*.json")) + list(comparison.rglob("*.jsonl"))
    assert len(written) > 10
    for path in written:
        if path.suffix == ".jsonl":
            load_lines(path)
        else:
            load_file(path)
    history = load_file(comparison / "results.json")["studies"]["sgd"]["full"]["trials"][0][
        "history"
    ]
    assert history[0][3] is None


def test_results_hold_the_protocol(comparison):
    results = load_file(comparison / "results.json")
    assert set(results["ranking"]) == {"restricted", "full"}
    for space in ("restricted", "full"):
        assert sorted(e["rank"] for e in results["ranking"][space]) == [1, 2, 3]
        assert {(c["included"], c["general"]) for c in results["inclusion"][space]} == {
            ("sgd", "momentum"),
            ("momentum", "adam"),
        }
        for optimizer in ("sgd", "momentum", "adam"):
            study = results["studies"][optimizer][space]
            assert len(study["trials"]) == 3 and len(study["best_of_k"]["median"]) == 3
            assert [r["seed"] for r in study["reruns"]] == [1, 2]
            assert all("test_error" in r["final"] for r in study["reruns"])
            best = min(t["value"] for t in study["trials"] if t["value"] is not None)
            assert study["best"]["value"] == best
    assert (comparison / "reruns" / "adam-full" / "seed2" / "metrics.jsonl").exists()


def test_compare_again_reuses_finished_work(comparison, capsys):
    before = (comparison / "reruns" / "sgd-full" / "seed1" / "summary.json").stat().st_mtime_ns
    assert cli.main(["compare", *SMOKE, "--out", str(comparison)]) == 0
    after = (comparison / "reruns" / "sgd-full" / "seed1" / "summary.json").stat().st_mtime_ns
    assert before == after
    err = capsys.readouterr().err
    for done in range(1, 13):  # 3 optimizers x 2 spaces x 2 seeds, each with an ETA
        assert f"[compare] re-runs {done}/12 done" in err
    assert "eta" in err.split("[compare] re-runs 12/12 done")[1].splitlines()[0]
    assert "[tune] trials 18/18 done" in err


def test_markdown_report_names_its_sections_and_figures(comparison):
    markdown = (comparison / "report.md").read_text()
    for heading in (
        "Ranking, restricted space",
        "Ranking, full space",
        "Inclusion consistency",
        "Rank flips",
        "Chosen hyperparameters",
        "Figures",
    ):
        assert f"## {heading}" in markdown
    for figure in re.findall(r"\]\(([\w.]+\.png)\)", markdown):
        assert (comparison / figure).stat().st_size > 1000
    assert {
        "best_of_k.png",
        "final_error.png",
        "curves_steps.png",
        "curves_wallclock.png",
        "lr_eps.png",
    } <= set(re.findall(r"\]\(([\w.]+\.png)\)", markdown))


def test_html_report_is_self_contained(comparison):
    page = (comparison / "report.html").read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page


def test_report_on_a_folder_of_neither_kind_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds neither results.json" in err and len(err.splitlines()) == 1
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"config": {}}')
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks studies, ranking" in err and len(err.splitlines()) == 1


def test_report_of_a_tune_folder_renders_that_study(tmp_path, capsys):
    tune = ["tune", "--workload", "digits_logreg", "--optimizer", "adam", "--space", "full"]
    assert cli.main([*tune, "--trials", "4", "--steps", "5", "--out", str(tmp_path)]) == 0
    assert cli.main(["report", str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "## Study digits_logreg-adam-full" in markdown
    assert markdown.count("| completed |") + markdown.count("| diverged |") == 4
    for figure in ("best_of_k", "lr", "lr_eps"):
        assert (tmp_path / f"digits_logreg-adam-full-{figure}.png").stat().st_size > 1000
        assert f"digits_logreg-adam-full-{figure}.png" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    restricted = tmp_path / "restricted"
    tune[-1] = "restricted"
    assert cli.main([*tune, "--trials", "2", "--steps", "5", "--out", str(restricted)]) == 0
    assert cli.main(["report", str(restricted)]) == 0
    assert not (restricted / "digits_logreg-adam-restricted-lr_eps.png").exists()
    assert (restricted / "digits_logreg-adam-restricted-lr.png").exists()


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  var status = document.createElement('p');
  status.id = 'image-check';
  status.textContent = 'images ' + loaded + '/' + images.length;
  document.body.appendChild(status);
});
</script></body>"""


@pytest.mark.chromium
def test_html_report_renders_with_its_images_in_chromium(comparison, chromium):
    page = (comparison / "report.html").read_text().replace("</body>", CHECK_SCRIPT)
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(page)
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={folder}/profile",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "Optimizer comparison: digits_mlp" in dom
    assert 'id="image-check">images 5/5<' in dom


def test_rank_flips_list_only_separated_ones_and_count_the_rest():
    from natgrad.report.document import checks_blocks

    results = {
        "config": {"spaces": ["restricted", "full"]},
        "inclusion": {"restricted": [], "full": []},
        "rank_flips": [{"first_better": "adam", "then_better": "sgd", "intervals_apart": True}],
        "rank_flips_within_intervals": 11,
        "warnings": [],
    }
    blocks = checks_blocks(results)
    heading = next(i for i, block in enumerate(blocks) if block.text.startswith("Rank flips"))
    flips = blocks[heading + 1]
    assert flips.items == [
        "adam beats sgd in the restricted space, sgd beats adam in the full space "
        "(intervals apart in both)",
        "11 other pair(s) swap order between the spaces within their intervals "
        "(not a significant difference)",
    ]
