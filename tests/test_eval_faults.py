"""Faults and bad input in an evaluation, one test each: stale samples are never credited to other weights,
"variant" never silently runs the full network, and failures end with exit status 2 and one line naming the file
and the fix, before a run folder exists where possible, leaving nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_eval import TINY_CONFIG, eval_main, save_export, save_training_checkpoint, save_vqvae, tiny_var

from varianttrain.evaluation import generation
from varianttrain.evaluation.runner import build_config, run

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    torch.save(tiny_var(0).state_dict(), root / "var.pth")
    torch.save(tiny_var(1).state_dict(), root / "other.pth")
    return {"root": root, "var": root / "var.pth", "other": root / "other.pth",
            "vqvae": save_vqvae(root / "vqvae.pth", seed=0), "vqvae2": save_vqvae(root / "vqvae2.pth", seed=5)}


@pytest.fixture()
def main():
    return eval_main()


def _args(files, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), "--base", str(files["var"]), "--vqvae", str(files["vqvae"]), "--out",
            str(out), "--mode", "full", "--no-fid", "--set", "cost.enabled=false", *extra]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------ stale samples
def test_replaced_weights_at_the_same_path_are_not_credited_with_old_samples(files, main, tmp_path, capsys):
    weights = tmp_path / "var.pth"
    shutil.copy(files["var"], weights)
    args = _args({**files, "var": weights}, tmp_path / "out")
    assert main(args) == 0
    pngs = sorted((tmp_path / "out" / "d2" / "full" / "samples").glob("*.png"))
    before = {p: p.read_bytes() for p in pngs}
    shutil.copy(files["other"], weights)  # new weights, same path
    assert main(args) == 2
    err = _error(capsys)
    assert "other settings" in err and "weights" in err and "not reused" in err
    assert {p: p.read_bytes() for p in pngs} == before  # nothing overwritten, nothing credited


def test_another_vqvae_is_not_credited_with_old_samples(files, main, tmp_path, capsys):
    assert main(_args(files, tmp_path / "out")) == 0
    assert main(_args({**files, "vqvae": files["vqvae2"]}, tmp_path / "out")) == 2
    assert "vqvae" in _error(capsys)


def test_toggling_ema_of_a_training_checkpoint_is_not_credited_with_old_samples(files, main, tmp_path, capsys):
    ckpt = save_training_checkpoint(tmp_path / "last.ckpt", tiny_var(0), ema_var=tiny_var(1))
    args = _args({**files, "var": ckpt}, tmp_path / "out")
    assert main(args) == 0
    assert main([*args, "--set", "model.ema=true"]) == 2
    err = _error(capsys)
    assert "'ema': False" in err and "'ema': True" in err


def test_images_without_a_manifest_are_not_reused(files, main, tmp_path, capsys):
    samples = tmp_path / "out" / "d2" / "full" / "samples"
    samples.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "data" / "README.md", samples / "c0000_i00000.png")
    assert main(_args(files, tmp_path / "out")) == 2
    assert "no manifest.json" in _error(capsys)


# ------------------------------------------------------------------------------------------ variant is never full
def test_supernet_without_its_metadata_json_is_an_error(files, main, tmp_path, capsys):
    export = save_export(tmp_path / "var_d4.pth", tiny_var(0), bridge=1, subsets={2: (1, 2)})
    export.with_suffix(".json").unlink()  # a copied .pth, or an export that died before its JSON
    args = ["--config", str(TINY_CONFIG), "--supernet", str(export), "--vqvae", str(files["vqvae"]), "--out",
            str(tmp_path / "out"), "--mode", "variant", "--no-fid", "--set", "budget.bridge_scales=null",
            "--set", "budget.subset_rule=null", "--set", "budget.depth_choices=null"]
    assert main(args) == 2
    err = _error(capsys)
    assert "carries no VARiant metadata" in err and "var_d4.json is missing" in err and "bridge N" in err
    assert not (tmp_path / "out").exists()


def test_training_checkpoint_evaluated_directly_runs_its_subnet(files, tmp_path):
    ckpt = save_training_checkpoint(tmp_path / "last.ckpt", tiny_var(0), bridge=1, depth_choices=(2,),
                                    subsets={2: [0, 3]})
    cfg = build_config(TINY_CONFIG, [f"model.supernet={ckpt}", f"model.vqvae={files['vqvae']}", "methods=[variant]",
                                     "budget.bridge_scales=null", "budget.depth_choices=null",
                                     "budget.subset_rule=null", "cost.enabled=false", f"out_dir={tmp_path / 'out'}"])
    row = run(cfg, log=lambda msg: None)["rows"][0]
    assert row["plan"] == "1:all 2:2 3:2 4:2" and row["flop_ratio"] == 1.0  # not "1:all 2:all 3:all 4:all"


@pytest.mark.parametrize("extra, needle", [
    (["--set", "budget.bridge_scales=4"], "bridge N=4 (from eval config) is not below the 4 scales"),
    (["--depth", "0"], "depth must be >= 1"),
    (["--num-classes", "0"], "num_classes must be >= 1"),
    (["--num-classes", "11"], "--num-classes 11: the model has 10 classes"),
    (["--reference-scale", "4"], "--reference-scale 4 is beyond the last scale 3"),
    (["--set", "generation.classes=[3, 12]"], "generation.classes [12] are outside 0..9"),
])
def test_settings_that_would_silently_mean_all_or_full_are_errors(files, main, tmp_path, capsys, extra, needle):
    assert main([*_args(files, tmp_path / "out"), "--mode", "full,variant", "--supernet", str(files["var"]),
                 *extra]) == 2
    assert needle in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_depth_the_supernet_never_trained_is_warned_in_log_and_report(files, tmp_path):
    export = save_export(tmp_path / "var_d4.pth", tiny_var(0), bridge=1, depth_choices=(2,), subsets={2: (1, 2)})
    cfg = build_config(TINY_CONFIG, [f"model.supernet={export}", f"model.vqvae={files['vqvae']}", "budget.depth=3",
                                     "methods=[variant]", "budget.bridge_scales=null", "budget.depth_choices=null",
                                     "budget.subset_rule=null", "cost.enabled=false", f"out_dir={tmp_path / 'out'}"])
    messages: list[str] = []
    report = run(cfg, log=messages.append)
    assert any("depth 3 was never trained by the supernet (trained depths [2]" in m for m in messages)
    assert "never trained" in report["warnings"][0]
    assert "warning: depth 3 was never trained" in (tmp_path / "out" / "d3" / "report.md").read_text()


# ------------------------------------------------------------------------------------------ failures, exit 2
def test_read_only_output_folder_fails_before_anything_runs(files, main, capsys):
    out = Path("/sys/varianttrain-eval-test")  # sysfs refuses new files, even to root
    if os.access("/sys", os.W_OK) and not Path("/sys/kernel").is_dir():
        pytest.skip("no read-only /sys on this system")
    assert main(_args(files, out)) == 2
    err = _error(capsys)
    assert f"output folder {out / 'd2'} cannot be written" in err and "--out" in err


def test_output_folder_filling_up_mid_run_stops_cleanly_and_resumes(files, main, tmp_path, capsys, monkeypatch):
    real_save, calls = generation.save_png, {"n": 0}

    def full_disk(path, img):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, img)

    monkeypatch.setattr(generation, "save_png", full_disk)
    out = tmp_path / "out"
    assert main(_args(files, out)) == 2
    err = _error(capsys)
    assert "No space left on device" in err and "rerun the same command" in err
    samples = out / "d2" / "full" / "samples"
    assert len(list(samples.glob("*.png"))) == 3 and not list(samples.glob(".*"))  # no half-written file
    monkeypatch.setattr(generation, "save_png", real_save)
    assert main(_args(files, out)) == 0 and len(list(samples.glob("*.png"))) == 6


def test_too_little_free_space_is_refused_before_a_run_folder_exists(files, main, tmp_path, capsys, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert main(_args(files, tmp_path / "out")) == 2
    assert "GiB are free" in _error(capsys) and not (tmp_path / "out").exists()


def test_bad_reference_statistics_are_named_before_anything_runs(files, main, tmp_path, capsys):
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"x")
    bad = tmp_path / "ref.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    wrong_width = tmp_path / "wide.npz"
    np.savez(wrong_width, mu=np.zeros(48), sigma=np.eye(48))
    base = [a for a in _args(files, tmp_path / "out") if a != "--no-fid"] + ["--inception-weights", str(weights),
                                                                            "--set", "metrics.enabled=true"]
    assert main([*base, "--ref-stats", str(bad)]) == 2
    assert f"metrics.ref_stats {bad} is not a readable .npz" in _error(capsys)
    assert main([*base, "--ref-stats", str(wrong_width)]) == 2
    assert "statistics of 48 features but the extractor gives 2048" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_truncated_export_json_is_named(files, main, tmp_path, capsys):
    export = save_export(tmp_path / "var_d4.pth", tiny_var(0), bridge=1, subsets={2: (1, 2)})
    text = export.with_suffix(".json").read_text()
    export.with_suffix(".json").write_text(text[: len(text) // 2])
    assert main([*_args(files, tmp_path / "out"), "--mode", "variant", "--supernet", str(export)]) == 2
    err = _error(capsys)
    assert f"{export.with_suffix('.json')} (the metadata of export var_d4.pth) is not readable JSON" in err
    assert "export again" in err


def test_a_corrupt_samples_npz_is_packed_again(files, main, tmp_path):
    out = tmp_path / "out"
    assert main(_args(files, out)) == 0
    npz = out / "d2" / "full" / "samples.npz"
    npz.write_bytes(b"PK\x03\x04 damaged")  # e.g. a disk error; newer than every PNG
    assert main(_args(files, out)) == 0
    with np.load(npz) as packed:
        assert packed["arr_0"].shape == (6, 64, 64, 3)


def test_a_corrupt_sample_png_is_named_with_the_fix(files, main, tmp_path, capsys, monkeypatch):
    from test_eval_runner import _toy_metrics

    out = tmp_path / "out"
    metric_args = [a for s in _toy_metrics(tmp_path, monkeypatch) for a in ("--set", s)]
    assert main([a for a in _args(files, out) if a != "--no-fid"] + metric_args) == 0
    broken = out / "d2" / "full" / "samples" / "c0001_i00000.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main([a for a in _args(files, out) if a != "--no-fid"] + metric_args) == 2
    err = _error(capsys)
    assert f"{broken} is not a readable image" in err and "delete it and rerun" in err


def test_reference_folder_with_a_corrupt_image_skips_and_counts_it(files, tmp_path, monkeypatch):
    from PIL import Image
    from test_eval_runner import _ToyExtractor

    from varianttrain.evaluation import inputs
    from varianttrain.evaluation import runner as runner_module

    monkeypatch.setattr(runner_module, "load_extractor", lambda cfg, device: _ToyExtractor())
    monkeypatch.setattr(inputs, "INCEPTION_FEATURES", 48)
    real = tmp_path / "real"
    rng = np.random.default_rng(0)
    for c in range(2):  # ImageFolder layout: one subfolder per class
        (real / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(real / f"class{c}" / f"{i}.png")
    (real / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    cfg = build_config(TINY_CONFIG, [f"model.base={files['var']}", f"model.vqvae={files['vqvae']}", "methods=[full]",
                                     "cost.enabled=false", "metrics.enabled=true", f"metrics.ref_folder={real}",
                                     f"metrics.inception_weights={weights}", f"out_dir={tmp_path / 'out'}"])
    messages: list[str] = []
    report = run(cfg, log=messages.append)
    assert np.isfinite(report["rows"][0]["fid"])
    assert any("1 unreadable reference image(s) skipped" in m and "broken.jpg" in m for m in messages)


def test_demo_classifier_of_another_class_count_is_refused_at_start(tmp_path, main, capsys):
    torch.save(tiny_var(0, num_classes=5).state_dict(), tmp_path / "var5.pth")
    vqvae = save_vqvae(tmp_path / "vqvae.pth")
    args = ["--config", str(TINY_CONFIG), "--base", str(tmp_path / "var5.pth"), "--vqvae", str(vqvae), "--out",
            str(tmp_path / "out"), "--mode", "full", "--set", "metrics.enabled=true", "--set",
            "metrics.extractor=demo-classifier", "--set",
            f"metrics.demo_classifier={REPO_ROOT / 'checkpoints' / 'demo' / 'classifier.pt'}", "--set",
            f"metrics.ref_folder={tmp_path}"]
    assert main(args) == 2
    err = _error(capsys)
    assert "tells 10 classes apart but the model generates 5" in err
    assert "ref_folder" in err  # reported together: the folder has no images
    assert json.dumps(err)  # one message, printable


# ------------------------------------------------------------------------------------------ methods
def test_a_method_named_without_its_weights_is_an_error_and_all_leaves_it_out(files, main, tmp_path, capsys):
    assert main(_args(files, tmp_path / "out", "--mode", "code")) == 2
    err = _error(capsys)
    assert "code" in err and "model.refiner" in err and "--refiner" in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_method_lists_the_registered_ones(files, main, tmp_path, capsys):
    assert main(_args(files, tmp_path / "out", "--mode", "fastvarr")) == 2
    err = _error(capsys)
    assert "unknown method 'fastvarr'" in err and "fastvar" in err and "code" in err
    assert not (tmp_path / "out").exists()
