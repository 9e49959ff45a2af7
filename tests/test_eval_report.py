"""What a report shows: budgets a method cannot reach are flagged (row, plot) and a run is listed once across budgets
in the summary; the grid holds the very samples; fidelity against closed forms; a one-method run gets no plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_eval import TINY_CONFIG, save_vqvae, tiny_var
from PIL import Image

from varianttrain.evaluation.runner import build_config, run
from varianttrain.evaluation.summary import SummaryError, summarize


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, object]:
    """Two budgets of the tiny model into one output root: d=2 and d=1 (fastvar cannot go below d=2's FLOPs)."""
    root = tmp_path_factory.mktemp("sweep")
    torch.save(tiny_var(0).state_dict(), root / "var.pth")
    vqvae = save_vqvae(root / "vqvae.pth")
    reports = {}
    for depth in (2, 1):
        cfg = build_config(TINY_CONFIG, [f"model.base={root / 'var.pth'}", f"model.supernet={root / 'var.pth'}",
                                         f"model.vqvae={vqvae}", f"budget.depth={depth}", f"out_dir={root / 'out'}",
                                         "methods=[full,variant,fastvar,earlyexit]", "cost.repeats=1",
                                         "cost.warmup=0", "cost.batch_sizes=[2]"])
        reports[depth] = run(cfg, log=lambda msg: None)
    return {"root": root, "reports": reports}


def test_a_budget_the_method_cannot_reach_is_flagged_in_row_and_plot(sweep):
    from varianttrain.evaluation.report import plot_points

    report = sweep["reports"][1]
    rows = {r["row"]: r for r in report["rows"]}
    fastvar = rows["fastvar"]
    assert fastvar["flop_ratio"] > 1.05 and fastvar["budget_reached"] is False
    assert rows["variant"]["budget_reached"] is True and rows["full"]["budget_reached"] is None  # the reference
    # the row is reported at the FLOPs it ran, not at the budget's
    assert fastvar["flops_per_image"] == fastvar["flops_closed_form_per_image"] > report["budget"]["flops_per_image"]
    markdown = Path(report["files"]["markdown"]).read_text()
    assert f"fastvar ⚠ over budget {fastvar['flop_ratio']:.2f}x" in markdown
    assert "**fastvar** cannot reach the budget" in markdown
    points = {p.label: p for p in plot_points(report["rows"])[0]}
    assert points["fastvar"].over_budget == fastvar["flop_ratio"] and points["variant"].over_budget is None
    assert points["full"].reference


def test_summary_lists_a_run_once_across_budgets_and_writes_its_plots(sweep, tmp_path):
    out = tmp_path / "summary"
    result = summarize([sweep["root"] / "out"], out)
    by_row: dict[str, list] = {}
    for r in result["rows"]:
        by_row.setdefault(r["row"], []).append(r)
    # fastvar runs the same plan at d=2 and d=1 (it cannot go lower): one line, both budgets, over budget at d=1
    assert len(by_row["fastvar"]) == 1 and sorted(by_row["fastvar"][0]["budgets"]) == ["d=1", "d=2"]
    assert by_row["fastvar"][0]["over_budget"] > 1.05
    assert len(by_row["full"]) == 1 and len(by_row["variant"]) == 2  # the subnets differ per budget
    assert sorted(result["plots"]) == []  # no quality figure in these reports: nothing to plot
    text = (out / "summary.md").read_text()
    assert "| fastvar ⚠ | d=2, d=1 |" in text or "| fastvar ⚠ | d=1, d=2 |" in text
    assert json.loads((out / "summary.json").read_text())["reports"] == result["reports"]


def test_the_same_folder_scored_on_other_images_is_another_run():
    """A sample folder's manifest leaves the image count out (a run may add images to it), so the summary's run
    identity must add the images: 100 and 500 images of one folder are two sets of numbers, not one run."""
    from varianttrain.evaluation.runner import identity_hash
    from varianttrain.evaluation.seeds import WorkItem

    manifest = {"method": "full", "budget": {"depth": 4}, "batch_size": 50, "weights": {"model": {"sha256": "a"}}}
    few = [WorkItem(label=c, index=i, seed=0, global_index=10 * c + i) for c in range(2) for i in range(3)]
    assert identity_hash(manifest, few) == identity_hash({**manifest, "budget": {"depth": 2}, "batch_size": 8}, few)
    assert identity_hash(manifest, few) != identity_hash(manifest, few[:3])


def test_summary_plots_quality_against_flops_latency_and_memory(sweep, tmp_path):
    copies = []
    for depth, report in sweep["reports"].items():  # the same reports with a quality figure and its noise
        report = json.loads(Path(report["files"]["json"]).read_text())
        for i, r in enumerate(report["rows"]):
            r["fid"] = 10.0 + i + depth
            r["noise"] = {"fid": {"value": r["fid"], "se": 0.5, "rounds": 10}}
        report["metric_kind"] = "demo FID (demo classifier)"
        path = tmp_path / f"report_d{depth}.json"
        path.write_text(json.dumps(report))
        copies.append(path)
    result = summarize(copies, tmp_path / "summary")
    assert result["plots"] == ["fid_vs_flops.png", "fid_vs_latency.png", "fid_vs_memory.png"]
    for name in result["plots"]:
        assert (tmp_path / "summary" / name).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "summary" / "summary.md").read_text()
    assert "demo FID (demo classifier)" in text and " ± 0.500 |" in text and "![FID vs flops](fid_vs_flops.png)" in text
    other = json.loads(copies[0].read_text())
    other["metric_kind"] = "FID (Inception)"
    copies[0].write_text(json.dumps(other))
    with pytest.raises(SummaryError, match="compute quality differently"):
        summarize(copies, tmp_path / "refused")


def test_the_grid_holds_the_very_samples(sweep):
    report = sweep["reports"][2]
    run_dir = Path(report["files"]["json"]).parent
    grid = np.asarray(Image.open(run_dir / "grid.png").convert("RGB"))
    from varianttrain.evaluation.grid import HEADER, LABEL_WIDTH, MARGIN

    side = 64
    sampled = [r["row"] for r in report["rows"] if r["status"] == "ok"]
    for i, row in enumerate(sampled):
        for j, (label, index) in enumerate([(0, 0), (1, 0), (2, 0)]):  # first sample of each class
            y = HEADER + i * (side + MARGIN) + MARGIN
            x = LABEL_WIDTH + j * (side + MARGIN) + MARGIN
            sample = np.asarray(Image.open(run_dir / row / "samples" / f"c{label:04d}_i{index:05d}.png"))
            assert np.array_equal(grid[y:y + side, x:x + side], sample), (row, label)


def test_fidelity_against_closed_forms(tmp_path):
    from varianttrain.evaluation.fidelity import folder_fidelity, pair_scores

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(10, 240, (3, 3, 32, 32), dtype=np.uint8))
    psnr, ssim = pair_scores(a, a)
    assert torch.isinf(psnr).all() and torch.allclose(ssim, torch.ones(3))
    shifted = a + 5  # every pixel off by 5 grey levels: MSE = (5 / 255)^2
    psnr, _ = pair_scores(shifted, a)
    assert torch.allclose(psnr.double(), torch.full((3,), 10 * math.log10(255 ** 2 / 25), dtype=torch.float64),
                          atol=1e-4)
    for folder, images in (("m", shifted), ("f", a)):
        (tmp_path / folder).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / folder / f"{i}.png")
    scores = folder_fidelity(tmp_path / "m", tmp_path / "f", ["0.png", "1.png", "2.png"])
    assert scores.summary()["psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / 25), abs=1e-4)
    assert scores.summary()["identical_images"] == 0


def test_a_single_method_run_explains_why_there_is_no_plot(sweep, tmp_path):
    root = sweep["root"]
    cfg = build_config(TINY_CONFIG, [f"model.base={root / 'var.pth'}", f"model.vqvae={root / 'vqvae.pth'}",
                                     "methods=[earlyexit]", "cost.enabled=false", f"out_dir={tmp_path}"])
    report = run(cfg, log=lambda msg: None)
    assert report["plot"] is None and not (tmp_path / "d2" / "pareto.png").exists()
    assert "No Pareto plot: fewer than two rows" in (tmp_path / "d2" / "report.md").read_text()
