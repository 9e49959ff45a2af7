"""The evaluation runner end to end on a tiny random model: report + plot, resume, 2-process equality, FID/IS with a
random Inception loaded through the real weights path, and the errors for missing inputs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from varianttrain.evaluation import generation
from varianttrain.evaluation.generation import ManifestMismatch, generate_samples
from varianttrain.evaluation.runner import build_config, run
from varianttrain.evaluation.seeds import sample_name, work_list
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.sampler import SamplingMethod

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "eval_tiny.yaml"
PATCH_NUMS = (1, 2, 3, 4)
BUILTINS = ["full", "variant", "earlyexit"]
REAL_GENERATE = generation.generate


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random VAR (depth 4, width 64, vocab 64, 10 classes) and VQVAE (ch 32) saved as plain state dicts."""
    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    var = VAR(VARConfig(depth=4, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, z_channels=32,
                        patch_nums=PATCH_NUMS))
    # default init, not init_weights(): its 1e-5 gates make skipped blocks invisible in the images
    vqvae = VQVAE(VQVAEConfig(vocab_size=64, z_channels=32, ch=32, patch_nums=PATCH_NUMS))
    torch.save(var.state_dict(), root / "var.pth")
    torch.save(vqvae.state_dict(), root / "vqvae.pth")
    return root / "var.pth", root / "vqvae.pth"


def _config(tiny_files, out: Path, *overrides: str):
    var_path, vqvae_path = tiny_files
    return build_config(TINY_CONFIG, [f"model.base={var_path}", f"model.supernet={var_path}",
                                      f"model.vqvae={vqvae_path}", f"out_dir={out}", *overrides])


def _eval_main():
    from varianttrain.cli.eval import main

    return main


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# ------------------------------------------------------------------------------------------------ report and plot
def test_mode_all_via_eval_py_writes_report_plot_and_grid(tiny_files, tmp_path):
    var_path, vqvae_path = tiny_files
    out = tmp_path / "out"
    args = ["--config", str(TINY_CONFIG), "--base", str(var_path), "--supernet", str(var_path), "--vqvae",
            str(vqvae_path), "--out", str(out), "--mode", "all", "--depth", "2", "--no-fid", "--set",
            "cost.repeats=1", "--set", "cost.warmup=0"]
    main = _eval_main()
    assert main(args) == 0
    run_dir = out / "d2"  # the budget is part of the folder: a depth sweep never collides
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert set(BUILTINS) <= set(rows) and "code" not in rows  # no refiner configured: left out, and said so
    assert report["skipped"] == [{"method": "code", "why": "not configured: model.refiner (--refiner)"}]
    for name in BUILTINS:
        assert len(_pngs(run_dir / name / "samples")) == 6  # 2 per class x 3 classes, same (class, index) everywhere
        assert (run_dir / name / "samples.npz").is_file() and (run_dir / name / "result.json").is_file()
        assert [c["batch_size"] for c in rows[name]["cost"]] == [1, 2]
        assert rows[name]["weights"]["model"]["file"] == str(var_path)
        assert rows[name]["rng_same_as_full"] is True
    with np.load(run_dir / "variant" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 64, 64, 3) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
    # FLOPs of the variant row come from what the sampler ran, and equal the closed form of its plan
    assert rows["variant"]["flops_per_image"] == rows["variant"]["flops_closed_form_per_image"]
    assert rows["full"]["cost"][0]["speedup"] == 1.0 and rows["variant"]["flops_speedup"] > 1
    assert 0 < rows["variant"]["fidelity"]["ssim"] < 1 and rows["variant"]["fidelity"]["reference"] == "full"
    markdown = (run_dir / "report.md").read_text()
    assert markdown.index("## Results") < markdown.index("![Pareto plot](pareto.png)") < markdown.index("## Protocol")
    for needle in ("top_k", "900", "rejection_sampling", "VARiant d=2 of 4", "| variant ", "speedup", "var.pth `",
                   "![samples](grid.png)", "code was left out", "torch-fidelity", "**git**"):
        assert needle in markdown, needle
    for name in ("pareto.png", "grid.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run resumes (nothing sampled or rewritten) and never clobbers the report
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/samples/*.png")}
    assert main([*args, "--set", "cost.enabled=false"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/samples/*.png")} == mtimes
    assert (run_dir / "report-2.json").is_file() and (run_dir / "report-2.md").is_file()
    assert main([*args, "--overwrite", "--set", "cost.enabled=false"]) == 0
    assert "cost" not in json.loads((run_dir / "report.json").read_text())["rows"][0]
    assert not (run_dir / "report-3.json").exists()
    # another budget into the same --out: its own folder, the first budget's samples untouched
    assert main([*args[:-4], "--depth", "1", "--cost-only", "--set", "cost.enabled=false"]) == 0
    assert (out / "d1" / "report.json").is_file()


def test_both_full_models_are_rows_and_code_runs_with_a_refiner(tmp_path):
    """Different base and supernet weights: full (base) and full@supernet are both rows; every training-free method
    samples with the base weights, variant with the supernet's; CoDe drafts with the base and refines with the
    refiner, and its memory counts both models."""
    from conftest import random_tiny_var, tiny_vqvae

    base, supernet = random_tiny_var(4, PATCH_NUMS, 32, seed=0), random_tiny_var(4, PATCH_NUMS, 32, seed=1)
    refiner = random_tiny_var(2, PATCH_NUMS, 32, seed=2)
    for name, model in (("base", base), ("supernet", supernet), ("refiner", refiner)):
        torch.save(model.state_dict(), tmp_path / f"{name}.pth")
    torch.save(tiny_vqvae(PATCH_NUMS, 32).state_dict(), tmp_path / "vqvae.pth")
    cfg = build_config(TINY_CONFIG, [f"model.{n}={tmp_path / n}.pth" for n in ("base", "supernet", "refiner",
                                                                               "vqvae")]
                       + [f"out_dir={tmp_path / 'out'}", "cost.repeats=1", "cost.warmup=0", "cost.batch_sizes=[2]"])
    report = run(cfg, log=lambda msg: None)
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["full", "full@supernet", "variant", "earlyexit", "depthvar", "stagevar", "fastvar", "code"]
    files = {k: r["weights"]["model"]["file"] for k, r in rows.items()}
    assert files["full@supernet"] == files["variant"] == str(tmp_path / "supernet.pth")
    assert {files[k] for k in ("full", "earlyexit", "depthvar", "stagevar", "fastvar", "code")} == \
        {str(tmp_path / "base.pth")}
    assert rows["code"]["weights"]["refiner"]["file"] == str(tmp_path / "refiner.pth")
    assert rows["full"]["weights"]["model"]["sha256"] != rows["variant"]["weights"]["model"]["sha256"]
    assert _pngs(tmp_path / "out" / "d2" / "full" / "samples") != _pngs(tmp_path / "out" / "d2" / "full@supernet" /
                                                                          "samples")
    weights = {n: sum(t.numel() * 4 for t in [*m.parameters(), *m.buffers()]) for n, m in
               (("base", base), ("refiner", refiner))}
    code, full = rows["code"]["cost"][0], rows["full"]["cost"][0]
    # peak memory = the weights the row uses + its activation peak: CoDe carries the refiner on top of the base
    assert code["peak_memory_bytes"] - full["peak_memory_bytes"] > 0.5 * weights["refiner"]
    assert len(code["kv_cache_bytes_by_model"]) == 2 and code["kv_cache_bytes"] == max(code["kv_cache_bytes_by_model"])
    assert rows["full@supernet"]["fidelity"]["reference"] == "full" and rows["variant"]["fidelity"]["reference"] == \
        "full@supernet"


def test_cost_only_times_a_second_full_row_as_the_first(tmp_path):
    """full@supernet runs the same network as full: it is not timed again and takes full's cost entries (also in a
    cost-only run, where no row was sampled and the FLOPs come from the timing)."""
    from conftest import random_tiny_var, tiny_vqvae

    for name, seed in (("base", 0), ("supernet", 1)):
        torch.save(random_tiny_var(4, PATCH_NUMS, 32, seed=seed).state_dict(), tmp_path / f"{name}.pth")
    torch.save(tiny_vqvae(PATCH_NUMS, 32).state_dict(), tmp_path / "vqvae.pth")
    cfg = build_config(TINY_CONFIG, [f"model.{n}={tmp_path / n}.pth" for n in ("base", "supernet", "vqvae")]
                       + [f"out_dir={tmp_path / 'out'}", "cost_only=true", "methods=[full,variant]",
                          "cost.repeats=2", "cost.warmup=0", "cost.batch_sizes=[2]"])
    rows = {r["row"]: r for r in run(cfg, log=lambda msg: None)["rows"]}
    full, second = rows["full"]["cost"][0], rows["full@supernet"]["cost"][0]
    assert second["timed_as"] == "full" and second["model_s_rounds"] == full["model_s_rounds"]
    assert rows["full@supernet"]["flops_per_image"] == rows["full"]["flops_per_image"] > 0


# --------------------------------------------------------------------------------------------------------- resume
class SimulatedKill(Exception):
    """Stands in for SIGKILL / Ctrl-C in the middle of a run."""


class _CountingGenerate:
    """Wraps the sampler: records the labels of every call; optionally fails after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[int]] = []
        self.fail_after = fail_after
        self.real = REAL_GENERATE

    def __call__(self, var, vqvae, labels, *args, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise SimulatedKill("simulated kill")
        self.calls.append(labels.tolist())
        return self.real(var, vqvae, labels, *args, **kwargs)


def _generate(models, method_dir: Path, items, batch_size=4, seed=0):
    var, vqvae = models
    manifest = {"method": "full", "seed": seed, "batch_size": batch_size}
    return generate_samples(var, vqvae, SamplingMethod(), SamplingConfig.official(), items, batch_size, method_dir,
                            manifest)


@pytest.fixture(scope="module")
def tiny_models(tiny_files):
    from varianttrain.checkpoints import load_var, load_vqvae

    return load_var(tiny_files[0], PATCH_NUMS), load_vqvae(tiny_files[1], PATCH_NUMS)


def test_resume_generates_only_what_is_missing(tiny_models, tmp_path, monkeypatch):
    items = work_list(range(3), 4, base_seed=0)  # 12 images, 3 batches of 4
    reference = tmp_path / "reference"
    _generate(tiny_models, reference, items)
    expected = _pngs(reference / "samples")
    assert len(expected) == 12

    # 1. files deleted by hand: only the batch holding them is sampled, only they are written
    samples = reference / "samples"
    mtimes = {p.name: p.stat().st_mtime_ns for p in samples.glob("*.png")}
    gone = sample_name(1, 1)  # item 5 -> batch 1
    (samples / gone).unlink()
    time.sleep(0.01)
    counter = _CountingGenerate()
    monkeypatch.setattr(generation, "generate", counter)
    result = _generate(tiny_models, reference, items)
    assert counter.calls == [[1, 1, 1, 1]] and result.written == 1 and result.skipped == 11
    assert _pngs(samples) == expected
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in samples.glob("*.png") if p.name != gone)

    # 2. a run killed after its first batch (with a stale temporary file) picks up where it stopped
    killed = tmp_path / "killed"
    monkeypatch.setattr(generation, "generate", _CountingGenerate(fail_after=1))
    with pytest.raises(SimulatedKill):
        _generate(tiny_models, killed, items)
    assert len(_pngs(killed / "samples")) == 4
    (killed / "samples" / f".{sample_name(2, 0)}.rank0.tmp").write_bytes(b"half a png")
    counter = _CountingGenerate()
    monkeypatch.setattr(generation, "generate", counter)
    _generate(tiny_models, killed, items)
    assert len(counter.calls) == 2  # batches 1 and 2 only
    assert _pngs(killed / "samples") == expected
    assert not list((killed / "samples").glob(".*"))  # temporary files cleaned up
    with np.load(killed / "samples.npz") as npz:
        assert npz["arr_0"].shape[0] == 12

    # 3. other settings in the same folder are refused
    with pytest.raises(ManifestMismatch, match="seed"):
        _generate(tiny_models, killed, items, seed=1)


# --------------------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, cfg) -> None:
    # What torchrun exports; the runner joins the group from these variables alone.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # CPU kernels may split reductions by thread count: keep it equal in both runs
    run(cfg, log=lambda msg: None)


@pytest.mark.ddp
def test_two_process_run_equals_single_process(tiny_files, tmp_path):
    overrides = ("methods=[full,variant]", "cost.enabled=false", "generation.samples_per_class=3",
                 "generation.batch_size=2")  # 9 images, 5 batches: uneven shards
    torch.set_num_threads(1)  # as in the workers (restored by conftest)
    single = run(_config(tiny_files, tmp_path / "single", *overrides), log=lambda msg: None)
    cfg2 = _config(tiny_files, tmp_path / "two", *overrides)
    torch.multiprocessing.start_processes(_dist_worker, args=(2, _free_port(), cfg2), nprocs=2, start_method="fork")
    for name in ("full", "variant"):
        one = _pngs(tmp_path / "single" / "d2" / name / "samples")
        two = _pngs(tmp_path / "two" / "d2" / name / "samples")
        assert len(one) == 9 and one == two  # byte-identical PNGs
        assert (tmp_path / "single" / "d2" / name / "samples.npz").read_bytes() == \
            (tmp_path / "two" / "d2" / name / "samples.npz").read_bytes()
    report = json.loads((tmp_path / "two" / "d2" / "report.json").read_text())
    assert "cpu x 2 rank(s)" in report["protocol"]["device"] and "cpu x 1 rank(s)" in single["protocol"]["device"]


# ----------------------------------------------------------------------------------------------------- FID / IS
def _save_random_inception(path: Path) -> None:
    """Random-weight stand-in for the real Inception file (docs/REFERENCES.md L10): same class, keys and format."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class NoWeights(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # construction would otherwise load the (empty) file strictly
            return None

    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    net = NoWeights("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(empty))
    torch.manual_seed(12)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):  # default init makes activations vanish -> every FID ~ 1e-12
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)


class _ToyExtractor:
    """A cheap stand-in with the extractor protocol: 4x4 average-pooled pixels (48 features), 10 logits."""

    def __init__(self):
        self.proj = torch.randn(48, 10, generator=torch.Generator().manual_seed(0))

    def __call__(self, images_B3HW: torch.Tensor):
        pool = torch.nn.functional.adaptive_avg_pool2d(images_B3HW.float() / 255, 4).flatten(1)
        return pool, pool @ self.proj


def _toy_metrics(tmp_path, monkeypatch) -> list[str]:
    """Overrides that route FID / IS through the toy extractor and an ADM-layout reference npz."""
    from varianttrain.evaluation import inputs
    from varianttrain.evaluation import runner as runner_module

    monkeypatch.setattr(runner_module, "load_extractor", lambda cfg, device: _ToyExtractor())
    monkeypatch.setattr(inputs, "INCEPTION_FEATURES", 48)  # the toy's width stands in for Inception's 2048
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in: the extractor is patched")
    rng = np.random.default_rng(1)
    arr_0 = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    feats = _ToyExtractor()(torch.from_numpy(arr_0).permute(0, 3, 1, 2))[0].double().numpy()
    ref = tmp_path / "VIRTUAL_tiny_labeled.npz"
    np.savez(ref, arr_0=arr_0, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False) + np.eye(48))
    return ["metrics.enabled=true", f"metrics.ref_stats={ref}", f"metrics.inception_weights={weights}"]


def test_metrics_wiring_noise_and_differences(tiny_files, tmp_path, monkeypatch):
    """FID / IS / precision-recall through the runner with a toy extractor; every figure carries a bootstrap
    standard error and every row its paired differences to the full model."""
    cfg = _config(tiny_files, tmp_path / "out", "methods=[full,variant,earlyexit]", "cost.enabled=false",
                  "metrics.precision_recall=true", "generation.samples_per_class=4", "metrics.bootstrap_rounds=40",
                  *_toy_metrics(tmp_path, monkeypatch))
    report = run(cfg, log=lambda msg: None)
    rows = {r["row"]: r for r in report["rows"]}
    for row in rows.values():
        assert row["num_samples"] == 12 and np.isfinite(row["fid"]) and row["fid"] > 0
        assert 1.0 - 1e-6 <= row["inception_score_mean"] <= 10 and 0 <= row["precision"] <= 1
        assert row["noise"]["fid"]["value"] == pytest.approx(row["fid"], rel=1e-6)
        assert row["noise"]["fid"]["se"] > 0 and row["noise"]["fid"]["rounds"] == 40
    assert rows["full"]["fid"] != rows["variant"]["fid"]
    diff = rows["earlyexit"]["differences"]["full"]["fid"]
    # the bootstrap's fast FID (eigenvalues against fixed reference statistics) agrees with scipy's to ~1e-6 of FID
    assert diff["difference"] == pytest.approx(rows["earlyexit"]["fid"] - rows["full"]["fid"],
                                               abs=1e-6 * rows["full"]["fid"])
    assert set(rows["earlyexit"]["differences"]) == {"full", "variant"} and set(rows["full"]["differences"]) == \
        {"variant"}
    markdown = (tmp_path / "out" / "d2" / "report.md").read_text()
    assert f"{rows['variant']['fid']:.3f} ± " in markdown and "| row | precision | recall |" in markdown
    assert "## Noise and differences" in markdown and "Δ FID vs full" in markdown
    assert report["metric_kind"] == "FID (Inception)" and "FID (Inception)" in markdown


@pytest.mark.slow  # ~20 s idle, ~50 s on a loaded 2-core machine (scipy sqrtm of 2048 x 2048 dominates)
def test_fid_and_is_end_to_end_with_random_inception(tiny_files, tmp_path, monkeypatch):
    import torch.hub
    from PIL import Image

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    start = time.perf_counter()
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    _save_random_inception(weights)
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(real / f"{i}.png")
    cfg = _config(tiny_files, tmp_path / "out", "methods=[full]", "cost.enabled=false", "metrics.enabled=true",
                  f"metrics.inception_weights={weights}", f"metrics.ref_folder={real}", "generation.num_classes=2",
                  "generation.samples_per_class=2", "metrics.precision_recall=true")  # 4 samples: CPU Inception
    report = run(cfg, log=lambda msg: None)
    row = report["rows"][0]
    assert row["num_samples"] == 4
    assert np.isfinite(row["fid"]) and row["fid"] > 0
    assert row["inception_score_mean"] >= 1.0 - 1e-6
    assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    markdown = (tmp_path / "out" / "d2" / "report.md").read_text()
    assert "FID (Inception)" in markdown and f"{row['fid']:.3f}" in markdown
    print(f"FID/IS end to end with a random Inception: {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------------------------------------- exports
def test_export_metadata_sets_bridge_subsets_and_vqvae(tiny_files, tmp_path):
    """An export's metadata (bridge N, layer subsets, VQVAE path) drives the budget when the config leaves it open."""
    import dataclasses
    import shutil

    from varianttrain.checkpoints import EXPORT_FORMAT
    from varianttrain.models.var import VARConfig

    var_path, vqvae_path = tiny_files
    export = tmp_path / "var_d4.pth"
    shutil.copy(var_path, export)
    var_config = dataclasses.asdict(VARConfig(depth=4, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64,
                                              z_channels=32, patch_nums=PATCH_NUMS))
    export.with_suffix(".json").write_text(json.dumps({
        "format": EXPORT_FORMAT, "version": 1, "var_config": var_config, "depth": 4, "depth_choices": [2],
        "bridge_scales": 1, "subset_rule": "nested", "layer_subsets": {"2": [1, 2]},
        "vqvae_checkpoint": str(vqvae_path)}))
    cfg = build_config(TINY_CONFIG, [f"model.supernet={export}", f"out_dir={tmp_path / 'out'}", "methods=[variant]",
                                     "budget.bridge_scales=null", "budget.subset_rule=null",
                                     "budget.depth_choices=null", "cost.enabled=false",
                                     "generation.samples_per_class=1"])
    report = run(cfg, log=lambda msg: None)
    assert report["protocol"]["budget"] == "VARiant d=2 of 4, bridge N=1, I_d=[1, 2]"
    assert report["provenance"]["inputs"]["vqvae"]["file"] == str(vqvae_path)
    assert report["rows"][0]["plan"] == "1:all 2:2 3:2 4:2"
    assert report["budget"]["sources"]["bridge_scales"].startswith("export metadata")
