"""The built-in demo: shipped checkpoints (sums, strict float32 loading), deterministic data, every demo recipe config
runs a few steps through the runner, `demo.py --quick` end to end, the findings' quick tables.

Everything writes under tmp_path: a tiny demo data set (8 train + 4 val images per class) tokenised with the shipped
tokenizer stands in for data/demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from varianttrain.demo.artifacts import (
    CLASSIFIER_FILE,
    SUMS_FILE,
    VQVAE_FILE,
    load_demo_models,
    tokenize_demo,
    var_file,
    verify_sums,
)
from varianttrain.file_hash import sha256_file

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints" / "demo"
TINY = {"per_class": 8, "per_class_val": 4}  # the default 8 train + 4 val shards
RECIPES = ["tokenizer", "classifier", "var_pretrain", "refiner_pretrain", "supernet", "supernet_fixed_p0.1",
           "supernet_fixed_p1.0"]
SHIPPED = {"vqvae.pth", "vqvae.json", "classifier.pt", "var_d12.pth", "var_d12.json", "supernet_d12.pth",
           "supernet_d12.json", "refiner_d4.pth", "refiner_d4.json"}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> dict[str, Path]:
    """A tiny demo data set and its tokens (shipped tokenizer) in a temporary folder."""
    from varianttrain.demo.dataset import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    torch.set_num_threads(2)
    generate_demo_dataset(root / "data", **TINY)
    tokens = tokenize_demo(root / "data", CKPT / VQVAE_FILE, root / "tokens", log=lambda msg: None)
    return {"root": root, "data": root / "data", "tokens": tokens}


# ------------------------------------------------------------------------------------------------ checkpoints
def test_shipped_checkpoints_match_sha256sums():
    assert (CKPT / SUMS_FILE).is_file() and (CKPT / "RECIPE.md").is_file()
    assert verify_sums(CKPT) == []
    listed = {line.split()[1] for line in (CKPT / SUMS_FILE).read_text().splitlines() if line.strip()}
    assert listed == SHIPPED and {VQVAE_FILE, CLASSIFIER_FILE, var_file(CKPT).name} <= listed
    total = sum((CKPT / name).stat().st_size for name in listed)
    assert total <= 30e6, f"shipped demo models take {total / 1e6:.1f} MB (limit 30 MB)"


def test_shipped_demo_has_seven_scales_and_a_matching_supernet_and_refiner():
    from varianttrain.checkpoints import load_exported_var

    models = load_demo_models(CKPT)
    assert models.var.patch_nums == (1, 2, 3, 4, 5, 6, 8) and models.var.depth == 12
    supernet, meta = load_exported_var(CKPT / "supernet_d12.pth")  # strict load
    assert meta["task"] == "supernet" and meta["depth_choices"] == [6, 4, 2] and meta["bridge_scales"] == 4
    # nested subsets: I_2 c I_4 c I_6 c {0..11}
    subsets = [set(meta["layer_subsets"][str(d)]) for d in (2, 4, 6)]
    assert subsets[0] < subsets[1] < subsets[2] < set(range(12))
    refiner, rmeta = load_exported_var(CKPT / "refiner_d4.pth")
    assert refiner.depth == 4 and refiner.patch_nums == models.var.patch_nums and refiner.V == models.var.V
    # the official stochastic-depth rule, 0.1 * depth / 24, so that skipping layers is meaningful
    assert models.var_meta["var_config"]["drop_path_rate"] == pytest.approx(0.1 * 12 / 24)
    assert rmeta["var_config"]["drop_path_rate"] == pytest.approx(0.1 * 4 / 24, abs=1e-3)


def test_verify_sums_reports_a_modified_file(tmp_path):
    import shutil

    for p in CKPT.iterdir():
        shutil.copy(p, tmp_path / p.name)
    with open(tmp_path / "vqvae.json", "a") as f:
        f.write(" ")
    problems = verify_sums(tmp_path)
    assert len(problems) == 1 and "vqvae.json" in problems[0]


def test_shipped_models_load_strictly_as_float32():
    models = load_demo_models(CKPT)  # strict loads inside; a missing or extra key raises
    for module in (models.var, models.vqvae, models.extractor):
        dtypes = {p.dtype for p in module.parameters()}
        assert dtypes == {torch.float32}
    assert models.var.depth == models.var_meta["depth"] and models.var.num_classes == 10
    stored = torch.load(models.var_path, map_location="cpu", weights_only=True)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}  # compact storage
    assert set(stored) == set(models.var.state_dict())
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    feats, logits = models.extractor(images)
    assert feats.shape == (2, 128) and logits.shape == (2, 10)


# ------------------------------------------------------------------------------------------------ data
def test_demo_data_generator_is_deterministic(tmp_path):
    from varianttrain.demo.dataset import generate_demo_dataset, render_image

    for c in (0, 7):
        assert np.array_equal(render_image(0, c, 3), render_image(0, c, 3))
    assert not np.array_equal(render_image(0, 1, 3), render_image(1, 1, 3))
    small = {"per_class": 2, "per_class_val": 1, "train_shards": 1, "val_shards": 1}
    a = generate_demo_dataset(tmp_path / "a", **small)
    b = generate_demo_dataset(tmp_path / "b", **small)
    assert a["content_sha256"] == b["content_sha256"] and a["files_sha256"] == b["files_sha256"]


def test_tokens_are_reused_and_match_the_tokenizer(tiny_demo):
    meta = json.loads((tiny_demo["tokens"] / "train" / "meta.json").read_text())
    assert meta["num_samples"] == 160 and meta["seq_len"] == 155  # 80 images + their mirror images, 7 scales
    source = json.loads((tiny_demo["tokens"] / "source.json").read_text())
    assert source["vqvae_sha256"] == sha256_file(CKPT / VQVAE_FILE)
    messages: list[str] = []
    tokenize_demo(tiny_demo["data"], CKPT / VQVAE_FILE, tiny_demo["tokens"], log=messages.append)
    assert any("reusing" in m for m in messages)


# ------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_config_runs_two_steps(recipe, tiny_demo, tmp_path, monkeypatch):
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import run

    monkeypatch.chdir(REPO)  # the configs name checkpoints/demo/... relative to the repository root (as train.py)
    data, tokens = tiny_demo["data"], tiny_demo["tokens"]
    overrides = [f"run.root={tmp_path}", "trainer.max_steps=2", "trainer.ckpt_every_n_steps=2",
                 "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "data.batch_size=4"]
    if recipe in ("tokenizer", "classifier"):
        overrides += [f"data.train_path={data}/shards/train-{{000000..000007}}.tar", "data.epoch_length=80",
                      f"data.val_path={data}/shards/val-{{000000..000003}}.tar", "data.val_epoch_length=40"]
    else:
        overrides += [f"data.train_path={tokens}/train", f"data.val_path={tokens}/val",
                      "validation.every_n_steps=2", "validation.num_batches=1", "validation.sample_classes=[0, 1]"]
    if recipe.startswith("supernet"):
        overrides += ["supernet.schedule.phase1=1", "supernet.schedule.phase2=1"]
    assert run(REPO / "configs" / "demo" / f"{recipe}.yaml", overrides, tasks=TASKS) == 0
    ckpts = list(tmp_path.glob("*/000/checkpoints/*.ckpt"))
    assert ckpts, f"{recipe}: no checkpoint written"


# ------------------------------------------------------------------------------------------------ main command
def test_demo_quick_end_to_end(tiny_demo, tmp_path, monkeypatch):
    from varianttrain.demo.pipeline import DemoOptions, run_demo

    root = tiny_demo["root"]
    opts = DemoOptions(quick=True, out_root=str(tmp_path / "runs"), data_dir=str(tiny_demo["data"]),
                       tokens_dir=str(tiny_demo["tokens"]), per_class=TINY["per_class"],
                       per_class_val=TINY["per_class_val"])
    monkeypatch.chdir(root)  # any working directory: the demo's default files are under the repository root
    summary = run_demo(opts, log=lambda msg: None)
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / "demo" and (run_dir / "summary.md").is_file()
    assert summary["plots"] and all(Path(p).stat().st_size > 0 for p in summary["plots"])
    rows = {r["row"]: r for r in summary["rows"] if r["row"] in ("full", "full@supernet")}
    # the two full models: each listed once, under every budget (the same samples at every budget)
    assert set(rows) == {"full", "full@supernet"}
    assert all(sorted(r["budgets"]) == sorted(f"d={d}" for d in summary["depths"]) for r in rows.values())
    assert var_file(CKPT).name in rows["full"]["weights"] and "supernet_d12.pth" in rows["full@supernet"]["weights"]
    listed = {(b, r["method"]) for r in summary["rows"] for b in r["budgets"]}
    for d in summary["depths"]:
        assert {(f"d={d}", m) for m in ("variant", "depthvar", "stagevar", "fastvar", "earlyexit", "code")} <= listed
        report = json.loads((run_dir / "eval" / f"d{d}" / "report.json").read_text())
        weights = {r["row"]: r["weights"]["model"]["file"] for r in report["rows"]}
        # training-free methods on the base model, VARiant on the shipped supernet (the short fine-tune is exported
        # but not evaluated), CoDe with the shipped refiner
        assert weights["depthvar"] == str(var_file(CKPT)) and weights["variant"] == str(CKPT / "supernet_d12.pth")
        assert summary["evaluated_supernet"] == str(CKPT / "supernet_d12.pth") and Path(summary["export"]).is_file()
        assert report["skipped"] == []
        code = next(r for r in report["rows"] if r["method"] == "code")
        assert code["weights"]["refiner"]["file"] == str(CKPT / "refiner_d4.pth")
        assert all(c["model_s_rounds"] and c["speedup_model"] is not None for r in report["rows"] for c in r["cost"])
        markdown = (run_dir / "eval" / f"d{d}" / "report.md").read_text()
        assert "![Pareto plot](pareto.png)" in markdown and "![samples](grid.png)" in markdown
    timing = summary["timing"]
    assert 0.0 < timing["block_share"] < 1.0 and set(timing["variant"]) == set(summary["depths"])
    assert isinstance(timing["target_met"], bool)
    ok_rows = [r for r in summary["rows"] if r["status"] == "ok"]
    assert all(r["fid"] is not None and r["class_accuracy"] is not None for r in ok_rows)
    again = run_demo(opts, log=lambda msg: None)  # a second run never touches the first one
    assert Path(again["run_dir"]) != run_dir and (run_dir / "summary.md").is_file()


# ------------------------------------------------------------------------------------------------ findings
@pytest.mark.parametrize("finding", ["asymmetry", "methods", "ratio"])
def test_findings_quick_produce_a_table(finding, tiny_demo, tmp_path, monkeypatch):
    from varianttrain.demo.findings import Setup, run_finding

    setup = Setup(quick=True, log=lambda msg: None, data_dir=str(tiny_demo["data"]),
                  tokens_dir=str(tiny_demo["tokens"]), per_class=TINY["per_class"],
                  per_class_val=TINY["per_class_val"])
    kwargs = {"supernet": str(var_file(CKPT))} if finding == "methods" else {}  # stand-in: no training needed
    monkeypatch.chdir(tmp_path)  # the demo names its files relative to the repository root, not the cwd
    results = run_finding(finding, setup, out_root=tmp_path, **kwargs)
    out = Path(results["out_dir"])
    assert (out / "table.md").is_file() and Path(results["plot"]).stat().st_size > 0
    assert results["table"].startswith("|") and len(results["rows"]) >= 4
    assert all(0.0 <= r["class_acc"] <= 1.0 and r["gflops"] > 0 for r in results["rows"])
    assert results["verdict"].startswith("**") and "Noise (the full model on 3 seed splits)" in results["table"]


def test_asymmetry_zones_follow_the_token_share():
    from varianttrain.demo.findings import asymmetry_zones

    # 1, 2, 3, 4 hold 30 of 155 tokens (19 %); adding 5x5 would make 55 (35 %)
    assert asymmetry_zones((1, 2, 3, 4, 5, 6, 8)) == {"early": (0, 1, 2, 3), "middle": (4, 5), "late": (6,)}
    # VAR-d30: 1..6 hold 91 of 680 tokens (13 %), 8x8 would make 155 (23 %): early = the paper's bridge N = 6
    assert asymmetry_zones((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)) == {"early": (0, 1, 2, 3, 4, 5), "middle": (6, 7, 8),
                                                                   "late": (9,)}


def test_compare_needs_twice_the_noise():
    from varianttrain.demo.findings import Noise, compare

    noise = Noise(fid=0.5, class_acc=0.01, rows=[])
    assert compare({"fid": 3.0}, {"fid": 4.01}, noise) == "better"
    assert compare({"fid": 3.0}, {"fid": 4.0}, noise) == "within noise"
    assert compare({"fid": 5.1}, {"fid": 4.0}, noise) == "worse"


def test_per_flop_sentence_divides_the_fid_lost_by_the_flops_saved():
    from varianttrain.demo.findings import Noise, per_flop_sentence

    full = {"fid": 5.0, "gflops": 2.0}
    zones = {"early": {"fid": 6.0, "gflops": 1.9}, "middle": {"fid": 5.5, "gflops": 1.5},
             "late": {"fid": 6.0, "gflops": 1.0}}
    text = per_flop_sentence(full, zones, Noise(fid=0.1, class_acc=0.0, rows=[]))
    # 1.0 / 0.1 = 10 per GFLOP (band 0.2 / 0.1 = 2), 0.5 / 0.5 = 1 (0.4), 1.0 / 1.0 = 1 (0.2)
    assert "early 10.0 ± 2.0, middle 1.0 ± 0.4, late 1.0 ± 0.2" in text
    assert "the early scales lose the most per FLOP saved" in text
