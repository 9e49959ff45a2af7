"""eval.py checks every input before building a model: missing files with their download commands, all problems at
once, the subsets a supernet stores are what runs (and a contradicting config is an error), the literal commands
(no --config, --config NAME, --print-config, --help)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_eval import (
    PATCH_NUMS,
    REPO_ROOT,
    TINY_CONFIG,
    eval_main,
    save_export,
    save_training_checkpoint,
    save_vqvae,
    tiny_var,
)
from peak_rss import run_with_peak_rss

from varianttrain.evaluation.runner import EvalInputError, build_config, run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preflight")
    torch.save(tiny_var(0).state_dict(), root / "var.pth")
    return {"root": root, "var": root / "var.pth", "vqvae": save_vqvae(root / "vqvae.pth")}


def _run_quietly(cfg):
    return run(cfg, log=lambda msg: None)


# ------------------------------------------------------------------------------------------------ empty clone
def test_the_documented_d30_command_in_an_empty_folder_names_every_missing_input(tmp_path):
    """`python eval.py --depth 8 --mode depthvar` with nothing downloaded: exit 2 within seconds, one report listing
    every missing file with the command that fetches it, nothing created, the 2 B-parameter model never built."""
    start = time.perf_counter()
    done, peak_kb = run_with_peak_rss(REPO_ROOT / "eval.py", ["--depth", "8", "--mode", "depthvar"], tmp_path,
                                      {**os.environ, "PYTHONUNBUFFERED": "1"},
                                      tmp_path.parent / f"{tmp_path.name}_peak_kb")
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr
    assert f"eval.py: config {REPO_ROOT / 'configs' / 'eval_d30.yaml'}" in err  # the ImageNet d30 defaults
    assert err.count("problems, nothing was run") == 1 and "4 problems" in err  # one report, every problem
    for file, key in (("checkpoints/var_d30.pth", "var_d30"), ("checkpoints/vae_ch160v4096z32.pth", "vqvae"),
                      ("checkpoints/weights-inception-2015-12-05-6726825d.pth", "inception"),
                      ("checkpoints/VIRTUAL_imagenet256_labeled.npz", "adm_ref")):
        assert file in err and f"python -m varianttrain.download {key}" in err, (file, err)
    assert "supernet" not in err and "refiner" not in err  # depthvar needs neither
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []  # nothing written
    assert 0 < peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"  # VAR-d30 alone would be 8 GB
    print(f"empty folder: exit 2 after {seconds:.1f} s, peak RSS {peak_kb / 1024:.0f} MiB")


def test_a_config_name_found_nowhere_lists_the_shipped_configs(capsys):
    assert eval_main()(["--config", "no_such_eval.yaml", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "config 'no_such_eval.yaml' not found" in err and "eval_d30.yaml" in err


def test_the_console_script_runs_the_same_main():
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["varianttrain-eval"] == "varianttrain.cli.eval:main"
    assert "from varianttrain.cli.eval import main" in (REPO_ROOT / "eval.py").read_text()


def test_every_problem_is_reported_at_once(files, tmp_path):
    bad_stats = tmp_path / "stats.npz"
    bad_stats.write_bytes(b"not an npz")
    cfg = build_config(TINY_CONFIG, [f"model.base={files['var']}", f"model.vqvae={tmp_path / 'nope.pth'}",
                                     "method_options.earlyexit.exit_after=0", "metrics.enabled=true",
                                     f"metrics.inception_weights={tmp_path / 'inception.pth'}",
                                     f"metrics.ref_stats={bad_stats}", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(EvalInputError) as err:
        _run_quietly(cfg)
    text = str(err.value)
    assert text.startswith("4 problems, nothing was run")
    for needle in ("exit_after=0", "nope.pth not found", "inception.pth not found", "stats.npz is not a readable "
                   ".npz"):
        assert needle in text, needle
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ checkpoint facts
def _stored_subset_config(supernet: Path, files, tmp_path, *extra: str):
    return build_config(TINY_CONFIG, [f"model.supernet={supernet}", f"model.vqvae={files['vqvae']}",
                                      "methods=[variant]", "cost.enabled=false", "generation.samples_per_class=1",
                                      f"out_dir={tmp_path / 'out'}", *extra])


NULL_BUDGET = ("budget.bridge_scales=null", "budget.subset_rule=null", "budget.depth_choices=null")


@pytest.mark.parametrize("kind", ["training checkpoint", "export"])
def test_subsets_stored_with_the_supernet_are_what_runs(kind, files, tmp_path):
    """A supernet stores I_2 = (1, 2), which no rule of the eval config would pick: variant runs exactly that."""
    var = tiny_var(0)
    if kind == "export":
        supernet = save_export(tmp_path / "var_d4.pth", var, bridge=1, depth_choices=(3, 2),
                               subsets={2: (1, 2), 3: (0, 1, 2)})
    else:
        supernet = save_training_checkpoint(tmp_path / "last.ckpt", var, bridge=1, depth_choices=(3, 2),
                                            subsets={2: [1, 2], 3: [0, 1, 2]})
    report = _run_quietly(_stored_subset_config(supernet, files, tmp_path, *NULL_BUDGET))
    assert report["budget"]["description"] == "VARiant d=2 of 4, bridge N=1, I_d=[1, 2]"
    assert report["rows"][0]["plan"] == "1:all 2:2 3:2 4:2"  # 2 blocks after one full scale: a subnet, not full
    assert report["rows"][0]["weights"]["model"]["kind"] == kind
    source = report["budget"]["sources"]["bridge_scales"]
    assert source.startswith("export metadata" if kind == "export" else "training checkpoint")


def test_an_eval_config_that_contradicts_the_supernet_is_an_error_naming_both(files, tmp_path):
    supernet = save_training_checkpoint(tmp_path / "last.ckpt", tiny_var(0), bridge=1, depth_choices=(3, 2),
                                        subsets={2: [1, 2]})
    # configs/eval_tiny.yaml says bridge 2, nested, depth choices [1, 2]
    with pytest.raises(EvalInputError) as err:
        _run_quietly(_stored_subset_config(supernet, files, tmp_path))
    text = str(err.value)
    assert "budget.bridge_scales=2 in the eval config contradicts 1 stored in training checkpoint" in text
    assert "budget.depth_choices=[1, 2] in the eval config contradicts [3, 2]" in text
    assert "subset_rule" not in text  # both say nested
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ command line
def test_config_name_resolves_against_configs_and_print_config(files, tmp_path, capsys):
    main = eval_main()
    assert main(["--config", "eval_tiny.yaml", "--print-config", "--depth", "1", "--base", str(files["var"]),
                 "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert f"eval.py: config {REPO_ROOT / 'configs' / 'eval_tiny.yaml'}" in captured.err
    assert f"the run writes into {tmp_path / 'o' / 'd1'}" in captured.out
    printed = captured.out
    assert "depth: 1" in printed and f"base: {files['var']}" in printed and "bootstrap_rounds: 50" in printed
    assert not (tmp_path / "o").exists()
    assert main(["--config", "demo/eval.yaml", "--print-config"]) == 0
    assert "extractor: demo-classifier" in capsys.readouterr().out
    assert main(["--var", "x.pth"]) == 2
    assert "--var was split into --base" in capsys.readouterr().err
    assert main(["--config", "eval_tiny.yaml", "--set", "model.var=x.pth"]) == 2
    assert "'model.var' was removed: split into model.base" in capsys.readouterr().err


def test_help_lists_methods_protocols_and_presets():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=300)
    assert done.returncode == 0
    for needle in ("variant    [model.supernet]", "code       [model.base + model.refiner]", "depthvar", "official",
                   "top-k 600", "temperature 1.1 on the first 7 scales, then 1.0", "temperature 1.0\n", "eval_d30.yaml",
                   "demo/eval.yaml", "--supernet", "--print-config"):
        assert needle in done.stdout, needle


def test_depth_sweep_into_one_output_root_does_not_collide(files, tmp_path):
    common = [f"model.base={files['var']}", f"model.vqvae={files['vqvae']}", "methods=[earlyexit]",
              "cost.enabled=false", f"out_dir={tmp_path / 'out'}"]
    for depth in (2, 1):  # the second depth used to stop at the first depth's manifest
        report = _run_quietly(build_config(TINY_CONFIG, [*common, f"budget.depth={depth}"]))
        assert Path(report["files"]["json"]).parent == tmp_path / "out" / f"d{depth}"


# ------------------------------------------------------------------------------------------------ loading
def test_models_are_built_without_random_init_and_loaded_strictly(monkeypatch, tmp_path):
    from varianttrain.checkpoints import CheckpointError, load_vqvae
    from varianttrain.evaluation.weights import build_var

    source = tiny_var(3)
    vqvae_file = save_vqvae(tmp_path / "vqvae.pth", seed=5)

    def forbidden(self, *args, **kwargs):
        if self.device.type != "meta":  # on the meta device an init call touches no storage and costs nothing
            raise AssertionError("random init ran for a model that is about to be loaded")
        return self

    with monkeypatch.context() as patch:
        for name in ("uniform_", "normal_", "trunc_normal_"):  # what nn.init's functions end in
            if hasattr(torch.Tensor, name):
                patch.setattr(torch.Tensor, name, forbidden)
        with pytest.raises(AssertionError, match="random init ran"):
            torch.nn.Linear(64, 64)  # not vacuous: a plain construction does run the init
        loaded = build_var(source.config, source.state_dict(), "cpu")
        vqvae = load_vqvae(vqvae_file, PATCH_NUMS)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(),
                                                 strict=True))
    saved = torch.load(vqvae_file, weights_only=True)
    assert vqvae.state_dict().keys() == saved.keys()
    assert all(torch.equal(vqvae.state_dict()[k], saved[k]) for k in saved)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    broken = dict(source.state_dict())
    broken.pop("head.weight")
    with pytest.raises(CheckpointError, match="head.weight"):
        build_var(source.config, broken, "cpu")


def test_a_released_state_dict_needs_its_pyramid(files, tmp_path):
    cfg = build_config(TINY_CONFIG, [f"model.base={files['var']}", f"model.vqvae={files['vqvae']}",
                                     "model.patch_nums=[1, 2, 4]", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(EvalInputError, match="set model.patch_nums"):
        _run_quietly(cfg)


def test_refiner_that_does_not_fit_the_drafter_is_refused_before_loading(files, tmp_path):
    other = tiny_var(1, depth=2, num_classes=7)
    torch.save(other.state_dict(), tmp_path / "refiner.pth")
    cfg = build_config(TINY_CONFIG, [f"model.base={files['var']}", f"model.refiner={tmp_path / 'refiner.pth'}",
                                     f"model.vqvae={files['vqvae']}", "methods=[code]", f"out_dir={tmp_path / 'o'}"])
    with pytest.raises(EvalInputError, match="classes 10 vs 7"):
        _run_quietly(cfg)


def test_an_export_naming_its_tokenizer_by_file_name_finds_it_next_to_itself(files, tmp_path):
    """Shipped exports record `vqvae_checkpoint: vqvae.pth` (no path of the machine that trained them): with no
    model.vqvae, eval uses the tokenizer in the export's own folder, whatever the working directory."""
    import shutil

    from varianttrain.evaluation.preflight import preflight

    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copy(files["vqvae"], folder / "vqvae.pth")
    supernet = save_export(folder / "supernet_d4.pth", tiny_var(0), bridge=1, depth_choices=(2,),
                           subsets={2: (0, 3)}, vqvae=Path("vqvae.pth"))
    cfg = build_config(TINY_CONFIG, [f"model.supernet={supernet}", "model.vqvae=null", "methods=[variant]",
                                     "cost.enabled=false", "metrics.enabled=false", f"out_dir={tmp_path / 'out'}",
                                     *NULL_BUDGET])
    pre = preflight(cfg)
    assert pre.vqvae.path == folder / "vqvae.pth"
