"""The report (python report/build.py): built from a synthetic full set of results in the schemas the scripts write,
its text holds every heading, reads its numbers and verdict words from the JSON, places every figure and keeps the
report's rules (no banned words, no test or file names in the main body, one spelling of "%", no raw keys); a missing
result or figure stops the build with the command to run. The README tables are filled from the same JSON."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

BUILD = REPO / "report" / "build.py"
THEORY_HEADINGS = [
    "Q1. Convolution is linear and time/space invariant", "Q2. Which layers are time/space invariant?",
    "(a) Additive constant", "(b) Pointwise non-linearity", "(c) Strided pooling", "(d) Is a CNN time invariant?",
    "Q3. Jacobians of the basic layers", "(a) Additive bias", "(b) Matrix multiplication", "(c) Convolution layer",
]
PRACTICAL_HEADINGS = [
    "Results at a glance", "Task 1: convolutional autoencoder", "Task 2: classifier from the encoder",
    "Shift test: what Q2(d) predicts, measured", "Task 3: what the two encoders keep",
    "Task 4: classifier trained on 100 labelled images", "Task 5: pretrained encoder with 100 labels", "Labs",
    "Lab: debiasing a face detector (DB-VAE)", "Lab: class activation maps (CAM)", "Beyond the assignment",
    "Reproducibility", "References",
]
FIRST_APPENDIX = "Lab: debiasing a face detector (DB-VAE)"  # its page is the first after the main body
MAIN_BODY_PAGES, TOTAL_PAGES = 12, 22  # the report's page limits: cover, theory and tasks 1-5; everything
# every figure the scripts write: curve plots are vector PDF, image grids PNG
FIGURES = ["ex1_reconstructions.png", "ex1_loss.pdf", "ex2_curves.pdf", "ex2_baselines.pdf", "ex2_shift.pdf",
           "ex3_digits.png", "ex3_loss.pdf", "ex3_tsne.png", "ex3_class_means.png", "ex3_interpolations.png",
           "ex4_curves.pdf", "ex45_compare.pdf", "ex45_compare_time.pdf", "lab_dbvae_dose.pdf",
           "lab_dbvae_oracle.pdf", "lab_dbvae_rare.pdf", "lab_dbvae_mass.pdf", "lab_cam_overview_1.png",
           "lab_cam_overview_2.png", "lab_cam_gradcam.png", "lab_cam_curves.pdf"]
BANNED = re.compile(r"\b(goal|met|budget|lent)\b", re.IGNORECASE)  # words the report must not use
TEST_OR_FILE = re.compile(r"\btest_\w+|\b\w+\.(?:py|json|typ|toml)\b")  # belong in appendix C only


def _build_module():
    spec = importlib.util.spec_from_file_location("report_build", BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pdf_pages(path) -> list[str]:
    pypdf = pytest.importorskip("pypdf")
    return [" ".join((page.extract_text() or "").split()) for page in pypdf.PdfReader(str(path)).pages]


def run_build(*args, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BUILD), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


# ----------------------------------------------------------------------------- a synthetic full set of results
def summ(m: float, s: float = 0.01, n: int = 5) -> dict:
    """common.stats.summarize's form: mean, std, 95 % CI, n and the per-seed values."""
    return {"mean": m, "std": s, "ci95": [m - 2 * s, m + 2 * s], "n": n, "values": [m - s, m + s] + [m] * (n - 2)}


def paired(d: float, half: float, p: float, verdict: str, n: int = 5, **extra) -> dict:
    """common.stats.paired's form (a - b); p_holm=... for a secondary endpoint."""
    return {"mean_diff": d, "ci95": [d - half, d + half], "p_value": p, "test": "paired t-test",
            "p_value_permutation": p, "n": n, "diffs": [d] * n, "verdict": verdict, **extra}


def hist(epochs: int, acc: bool = True) -> list[dict]:
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e + 0.01 * e, "train_time_s": 1.5 * e, "lr": 1e-3}
            for e in range(1, epochs + 1)]
    return [dict(r, train_acc=min(1.0, 0.5 + 0.1 * r["epoch"]), test_acc=0.5 + 0.04 * r["epoch"]) if acc else r
            for r in rows]


RECIPE = {"epochs": 8, "lr": 0.003, "batch_size": 128, "weight_decay": 0.0, "schedule": "onecycle", "eval_every": 1,
          "augment": "none"}
PROV = {"commit": "0" * 40, "dirty": False, "cpu": "Some CPU", "simd": "AVX512", "threads": 2, "device": "cpu",
        "precision": "fp32"}


def few_label(acc: float, time_s: float) -> dict:
    """common.fewshot.fit_seeds's form over 10 seeds."""
    o = {"epoch_min_test_loss": 2, "min_test_loss": 1.1, "test_acc_at_min_test_loss": acc, "epoch_train_acc_100": 3,
         "final_gap_acc": 0.29, "final_gap_loss": 1.2, "test_loss_rise": 0.35}
    return {"seeds": list(range(10)), "final_test_acc": summ(acc, 0.02, 10), "final_test_loss": summ(1.3, 0.1, 10),
            "final_train_acc": summ(1.0, 0.0, 10), "train_time_s": summ(time_s, 0.5, 10),
            "seed_time_s": summ(time_s + 1, 0.5, 10), "final_gap_acc": summ(0.29, 0.01, 10),
            "epoch_min_test_loss": summ(40.0, 5.0, 10), "test_loss_rise": summ(0.35, 0.05, 10), "overfitting": o,
            "mean_history": hist(3), "history": {"0": hist(3)}}


def ex2() -> dict:
    base = {k: {"test_acc": summ(a), "test_loss": summ(0.03), "params": p, "history": hist(4)}
            for k, a, p in (("lab2_cnn", 0.9924, 124670), ("lab_mlp", 0.9706, 55050), ("skip_mlp", 0.9762, 67530))}
    mcn = {"acc_a": 0.99, "acc_b": 0.99, "diff": 0.0, "ci95": [-0.001, 0.001], "a_only": 20, "b_only": 18,
           "n": 10000, "p_value": 0.8, "verdict": "no significant difference"}
    comps = {"lab2_cnn": paired(0.0002, 0.0006, 0.64, "no significant difference"),
             "lab_mlp": paired(0.022, 0.003, 1e-5, "higher", p_holm=2e-5),
             "skip_mlp": paired(0.0164, 0.003, 1e-5, "higher", p_holm=2e-5)}
    line = lambda a: [summ(a - 0.05 * px, n=3) for px in range(7)]  # noqa: E731
    models = {k: {"mean_over_directions": line(a), "directions": {d: line(a) for d in ("right", "left", "down", "up")}}
              for k, a in (("augmented", 0.99), ("not_augmented", 0.9), ("gap_head", 0.95))}
    secondary = {f"{k}_vs_not_augmented_{px}px": paired(0.1, 0.05, 0.001, "higher" if k == "augmented" or px > 3
                                                         else "lower", n=3, p_holm=0.01)
                 for k in ("augmented", "gap_head") for px in range(1, 7)}
    return {"name": "ex2", "seeds": [0, 1, 2, 3, 4], "recipe": {**RECIPE, "epochs": 4, "augment": "shifts ≤ 2 px"},
            "train_size": 60000, "test_size": 10000, "test_acc": summ(0.9926, 0.0006), "test_loss": summ(0.024),
            "params": 119190, "history": hist(4), "baselines": base,
            "comparisons": {"primary": "lab2_cnn",
                            **{k: {"paired_t": c, "mcnemar": [mcn] * 5} for k, c in comps.items()}},
            "shift_test": {"shifts_px": list(range(7)), "test_size": 2000, "fill": "zeros", "seeds": [0, 1, 2],
                           "models": models, "primary": "augmented_vs_not_augmented",
                           "augmented_vs_not_augmented": paired(0.168, 0.03, 0.002, "higher", n=3),
                           "secondary": secondary},
            "provenance": {**PROV, "precision": "bf16"}, "wall_time_s": 600.0}


def lab_dbvae() -> dict:
    arms = {"standard_dark0": (0.0, 0.0), "standard": (0.01, 0.0), "standard_dark0.1": (0.1, 0.0),
            "standard_dark0.5": (0.5, 0.0), "dbvae": (0.01, 0.0), "oracle": (0.01, 0.0), "standard_dim": (0.01, 0.01),
            "dbvae_dim": (0.01, 0.01), "oracle_dim": (0.01, 0.01)}
    groups = ("LF", "LM", "DF", "DM")
    test_set = lambda: {"dark_gap": summ(4.5, 1.0, 10), "detect": {g: summ(0.9, 0.01, 10) for g in groups},  # noqa: E731
                        "auc": {g: summ(0.99, 0.001, 10) for g in groups}}
    ends = {"dose_gap_low_minus_high": ("jittered/dark_gap", "standard", "standard_dark0.5", "higher"),
            "gap_reduction_dbvae": ("jittered/dark_gap", "standard", "dbvae", "no significant difference"),
            "dim_gap_reduction_dbvae": ("dim/dim_gap", "standard_dim", "dbvae_dim", "higher"),
            "dim_gap_dbvae_minus_oracle": ("dim/dim_gap", "dbvae_dim", "oracle_dim", "higher"),
            "gap_reduction_oracle": ("jittered/dark_gap", "standard", "oracle", "higher"),
            "dark_gap_standard": ("jittered/dark_gap", "standard", None, "higher"),
            "gap_reduction_dbvae_mit": ("mit/dark_gap", "standard", "dbvae", "no significant difference"),
            "dim_gap_reduction_oracle": ("dim/dim_gap", "standard_dim", "oracle_dim", "higher")}
    primary = dict(zip(("dose", "dbvae", "rare", "oracle"), ends))
    endpoints = {k: {"metric": m, "a": a, "b": b, **paired(3.1, 1.5, 0.004, w, n=10), "std": 2.0, "mde80": 2.7,
                     **({} if k in primary.values() else {"p_holm": 0.012})} for k, (m, a, b, w) in ends.items()}
    per_epoch = [{"epoch": e, "mass": summ(0.025, 0.003, 10), "mass_over_share": 2.5} for e in (1, 2)]
    grid = {"probe_auc": summ(0.96, 0.01, 10), "max": {"mean": [[0.01 * (i + j) for j in range(4)] for i in range(5)]}}
    return {"name": "lab_dbvae", "recipe": {"epochs": 2, "batch_size": 32, "lr": 5e-4, "alpha": 0.001, "bins": 10,
                                            "combine": "max", "train_faces": 2000, "dark_fraction": 0.01,
                                            "dim_fraction": 0.01, "augment": True},
            "seeds": {a: list(range(24 if m else 10)) for a, (d, m) in arms.items()}, "groups": list(groups),
            "reject": 0.99,
            "arms": {a: {"net": "dbvae" if a.startswith("dbvae") else "cnn",
                         "sampler": "latent" if a.startswith("dbvae") else "oracle" if a.startswith("oracle") else None,
                         "dark": d, "dim": m, "rare": "dim" if m else "dark"} for a, (d, m) in arms.items()},
            "test_sets": ["jittered", "dim", "mit"], "primary": primary, "endpoints": endpoints,
            "oracle_share": {"dark": {"pct": 14.4, "ci95": [-20.0, 51.0]}, "dim": {"pct": 60.2, "ci95": [20.0, 95.0]}},
            "dose": {"fractions": [0.0, 0.01, 0.1, 0.5],
                     "arms": ["standard_dark0", "standard", "standard_dark0.1", "standard_dark0.5"]},
            "metrics": {a: {"jittered": test_set(), "dim": {**test_set(), "dim_gap": summ(30.0, 3.0, 10)},
                            "mit": test_set()} for a in arms},
            "sampling": {a: {"share_of_faces": 0.01, "per_epoch": per_epoch}
                         for a in ("dbvae", "oracle", "dbvae_dim", "oracle_dim")},
            "mass_grid": {"alphas": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "bins": [5, 10, 20, 40],
                          "dbvae": {"dark": grid}, "dbvae_dim": {"dim": grid}},
            "data": {"counts": {"jittered_LF": 500, "mit_LF": 15, "test_nonfaces": 2363},
                     "augmentation": {"train": {"max_shift": 6.0, "zoom_lo": 0.85, "zoom_hi": 1.15, "max_deg": 10.0}}},
            "provenance": PROV, "wall_time_s": 700.0}


def synthetic_results(d) -> dict:
    """Every result file the report reads, in the schemas the scripts write, and a figure file per FIGURES entry."""
    flat = lambda last: {"test_l1": [0.05, 0.04, 0.035], "rel_gain": [0.2, last], "last_rel_gain": last,  # noqa: E731
                         "flat": last < 0.01}
    ex5_variants = {"scratch": few_label(0.66, 10.0), "finetune": few_label(0.76, 12.0),
                    "frozen_encoder": few_label(0.78, 6.0), "finetune_lowlr": few_label(0.77, 12.0)}
    for k, v in ex5_variants.items():
        if k != "scratch":
            v.update(vs_scratch=paired(0.1055, 0.026, 1e-4, "higher", n=10),
                     vs_scratch_loss=paired(-0.6, 0.1, 1e-4, "lower", n=10))
    cams = [{"class": c, "kind": k, "val_index": i, "pred": c, "confidence": 0.9, "border_share": b}
            for i, (c, k, b) in enumerate((("tench", "correct", 0.3), ("tench", "wrong_reason_candidate", 0.6),
                                           ("tench", "misclassified", 0.4)))]
    res = {
        "ex1": {"name": "ex1", "seeds": [0, 1, 2], "recipe": RECIPE, "latent_dim": 12,
                "primary_endpoint": "test_l1_conv_fc_minus_conv",
                "variants": {"conv": {"test_l1": summ(0.0337, 0.0004, 3), "params": 193156, "collapsed": [False] * 3,
                                      "latent_shape": [12]},
                             "conv_fc": {"test_l1": summ(0.0291, 0.0003, 3), "params": 237069,
                                         "collapsed": [False] * 3, "latent_shape": [12]}},
                "test_l1_conv_fc_minus_conv": paired(-0.0046, 0.001, 0.003, "lower", n=3),
                "flat_rel_gain_threshold": 0.01, "flattening": {"conv": flat(0.008), "conv_fc": flat(0.006)},
                "history": {"conv": hist(3, False), "conv_fc": hist(3, False)}, "pca_test_l1": 0.0948,
                "pca_test_l1_clipped": 0.0861, "all_black_test_l1": 0.1307, "config": {"channels": [32, 64, 128]},
                "provenance": PROV, "wall_time_s": 321.5},
        "ex2": ex2(),
        "ex3": {"name": "ex3", "seed": 0, "recipe": RECIPE, "primary_endpoint": "test_l1_cls_minus_ae",
                "test_l1_cls_minus_ae": paired(0.0334, 0.005, 1e-4, "higher", n=10), "ae_test_l1": 0.0291,
                "cls_decoder_test_l1": 0.0625, "ae_own_decoder_test_l1": 0.0290,
                **{k: {"ae": a, "cls": c} for k, a, c in (("silhouette", 0.11, 0.62), ("knn_acc", 0.95, 0.99),
                                                         ("within_class", 3.1, 1.2), ("between_class", 4.0, 6.5),
                                                         ("between_within_ratio", 1.29, 5.42),
                                                         ("min_between_within_ratio", 0.4, 2.1))},
                "knn_k": 5, "flat_rel_gain_threshold": 0.01, "flattening": {"ae": flat(0.004), "cls": flat(0.005)},
                "provenance": PROV, "wall_time_s": 200.0},
        "ex4": {"name": "ex4", "recipe": {**RECIPE, "epochs": 100, "schedule": "constant", "eval_every": 10},
                "train_indices": list(range(100)), "train_class_counts": [10] * 10, "params": 119190,
                "test_size": 2000, **few_label(0.6543, 10.0), "provenance": PROV, "wall_time_s": 40.0},
        "ex5": {"name": "ex5", "recipe": {**RECIPE, "epochs": 100, "schedule": "constant"}, "seeds": list(range(10)),
                "train_indices": list(range(100)), "test_size": 2000, "variants": ex5_variants,
                "comparisons": {k: {"acc": paired(-0.02, 0.01, 0.004, "lower", n=10),
                                    "loss": paired(0.1, 0.05, 0.01, "higher", n=10)}
                                for k in ("finetune - frozen_encoder", "finetune_lowlr - frozen_encoder",
                                          "finetune_lowlr - finetune")},
                "config": {"encoder_lr_ratio": 0.1}, "provenance": PROV, "wall_time_s": 300.0},
        "ex5_selftrain": {"name": "ex5", "seeds": [0, 1, 2], "train_indices": list(range(100)),
                          "config": {"neighbours": 15, "rounds": [0.5, 1.0], "round_epochs": 4},
                          "variants": {"scratch": few_label(0.66, 10.0),
                                       "selftrain": {**few_label(0.972, 100.0),
                                                     "vs_scratch": paired(0.31, 0.02, 1e-4, "higher", n=3)}},
                          "provenance": PROV, "wall_time_s": 900.0},
        "lab_dbvae": lab_dbvae(),
        "lab_cam": {"name": "lab_cam", "recipe": {**RECIPE, "epochs": 20, "label_smoothing": 0.1, "val_size": 80,
                                                  "augment": "random-resized crops, flips"},
                    "val_acc": 0.8594, "classes": ["tench", "church", "parachute"], "feature_map_size": [5, 5],
                    "per_class_val_acc": {"tench": 0.9, "church": 0.8, "parachute": 0.95}, "examples": cams,
                    "gradcam_comparison": {"images": 200, "pearson_raw_mean": 1.0, "pearson_raw_min": 0.9999,
                                           "pearson_relu_minmax_mean": 0.97, "pearson_relu_minmax_min": 0.5,
                                           "gradcam_over_cam_scale_mean": 0.04, "expected_scale_1_over_hw": 0.04},
                    "history": hist(2), "config": {"seed": 0}, "provenance": PROV, "wall_time_s": 800.0},
        "bench": {"rule": {"pays_speedup": 1.15, "spread_sds": 2.0}, "provenance": PROV, "wall_time_s": 180.0,
                  **{m: {"metric": "test_acc", "img_s_fp32": 2100.0, "img_s_bf16": 2100.0 * x, "speedup": x,
                         "bf16_minus_fp32": paired(0.0, 0.001, 0.9, "no significant difference", n=3),
                         "adopted": "bf16" if x >= 1.15 else "fp32"}
                     for m, x in (("ae", 2.48), ("classifier", 0.9), ("dbvae", 1.2), ("cam", 2.0))}},
        "bench_stacking": {"n_seeds": 10, "test_images": 2000, "step_ratio_stacked_over_plain": 1.11,
                           "eval_ratio_stacked_over_plain": 2.41, "provenance": PROV, "wall_time_s": 60.0},
        "pipeline": {"provenance": PROV, "matmul_peak": {"best_gflops": 123.4}, "total_s": 3600.0,
                     "stages": [{"name": "ex1", "seconds": 600.0}, {"name": "report", "seconds": 5.0}]},
    }
    (d / "results").mkdir(parents=True)
    (d / "figures").mkdir()
    for name, obj in res.items():
        (d / "results" / f"{name}.json").write_text(json.dumps(obj))
    for f in FIGURES:
        write_figure(d / "figures" / f)
    return res


def write_figure(path) -> None:
    """A small image in the figure's format (PNG, or a one-page PDF)."""
    from PIL import Image
    Image.new("RGB", (160, 80), (200, 60, 60)).save(path, "PDF" if path.suffix == ".pdf" else "PNG")


# ----------------------------------------------------------------------------- builds (Typst)
@pytest.mark.slow
def test_report_from_synthetic_results_reads_the_json_and_keeps_the_rules(tmp_path):
    pytest.importorskip("typst")
    synthetic_results(tmp_path)
    info = _build_module().build(tmp_path / "full.pdf", tmp_path / "results", tmp_path / "figures")
    assert not info["missing"] and sorted(info["figures"]) == sorted(FIGURES)
    pages = pdf_pages(tmp_path / "full.pdf")
    text = " ".join(pages)
    for h in THEORY_HEADINGS + PRACTICAL_HEADINGS:
        assert h in text, f"heading {h!r} missing from the PDF text"
    # numbers and verdict words come from the JSON (mean [95 % CI]; paired differences with their verdict)
    for s in ("99.26 % [99.14, 99.38]", "0.0291 [0.0285, 0.0297]", "+0.02 pts [−0.04, +0.08]",
              "no significant difference", "65.43 % [61.43, 69.43]", "+10.55 pts [+7.95, +13.15]",
              "60 % [20, 95]", "85.94 %", "237,069"):
        assert s in text.replace("\xa0", " "), s
    assert_rules(pages)
    for leak in ("else [", "#let", "#if"):  # Typst code printed as text (e.g. an `else` on a line of its own)
        assert leak not in text, leak


def assert_rules(pages: list[str]) -> None:
    """The report's rules on its PDF text: no test or file names in the main body, no banned words, one spelling of
    a percentage, no raw JSON keys, no ASCII arrows."""
    text = " ".join(pages)
    main_body = pages[:next(i for i, p in enumerate(pages) if i > 0 and FIRST_APPENDIX in p)]
    assert TEST_OR_FILE.findall(" ".join(main_body)) == [], "test or file names in the main body"
    assert not BANNED.findall(text), f"banned words: {BANNED.findall(text)}"
    assert not re.search(r"\d%", text), "a percentage without its space ('99.31 %' is the one spelling)"
    leaked = raw_keys(text)
    assert leaked == [], f"raw JSON keys in the PDF text (figure legends included): {leaked}"
    for ascii_op in ("<=", "->", ">="):
        assert ascii_op not in text, f"ASCII {ascii_op!r} in the PDF text (use ≤ / → / ≥ or words)"


@pytest.mark.slow
def test_build_stops_on_a_missing_result_or_figure_with_the_command_to_run(tmp_path):
    pytest.importorskip("typst")
    (tmp_path / "results").mkdir()
    proc = run_build("--out-dir", tmp_path, "--pdf", tmp_path / "empty.pdf", ok=False)
    assert "missing ex1: run `python ex1_autoencoder.py`" in proc.stdout
    assert "run `python ex1_autoencoder.py`, then `python report/build.py`" in proc.stderr
    assert not (tmp_path / "empty.pdf").exists()
    shutil.rmtree(tmp_path / "results")
    synthetic_results(tmp_path)
    (tmp_path / "figures" / "ex3_tsne.png").unlink()
    proc = run_build("--out-dir", tmp_path, "--pdf", tmp_path / "nofig.pdf", ok=False)
    assert "figure ex3_tsne: expected one of report/figures/ex3_tsne.{pdf,svg,png,jpg}" in proc.stderr


@pytest.mark.slow
def test_report_from_the_committed_results_fits_its_pages_and_places_every_figure(tmp_path):
    """Built from report/results and report/figures (a copy: a running experiment cannot interfere): the main body
    fits MAIN_BODY_PAGES, the whole report TOTAL_PAGES, it keeps the rules (the real figures' text included), and
    every figure there is placed."""
    pytest.importorskip("typst")
    for sub in ("results", "figures"):
        shutil.copytree(REPO / "report" / sub, tmp_path / sub)
    run_build("--out-dir", tmp_path, "--pdf", tmp_path / "ex2.pdf")
    pages = pdf_pages(tmp_path / "ex2.pdf")
    main = next(i for i, p in enumerate(pages) if i > 0 and FIRST_APPENDIX in p)
    assert main <= MAIN_BODY_PAGES and len(pages) <= TOTAL_PAGES, (main, len(pages))
    assert_rules(pages)
    assert _build_module().unplaced_figures(tmp_path / "figures") == []


# ----------------------------------------------------------------------------- what ex2.typ places (no Typst)
def test_every_placed_figure_is_written_by_a_script():
    """FIGURES (what the scripts write) and the figures ex2.typ places agree, by stem."""
    mod = _build_module()
    stems = {f.rsplit(".", 1)[0] for f in FIGURES}
    assert mod.placed_figures() == stems - set(mod.UNUSED_FIGURES)
    assert all(isinstance(why, str) and why.strip() for why in mod.UNUSED_FIGURES.values())


def test_unplaced_figures_are_found_by_stem(tmp_path):
    mod = _build_module()
    for name in ("ex1_loss.pdf", "ex3_tsne.png", "stray_plot.svg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert mod.unplaced_figures(tmp_path) == ["stray_plot"]


# Every snake_case word in the PDF text is a raw JSON key leaking into the prose (file names removed first).
SNAKE_CASE = re.compile(r"\b[a-z]+_[a-z_]+\b")
FILE_NAME = re.compile(r"[\w./-]+\.(?:py|json|png|pdf|pt|typ|toml)\b")
TEST_NAME = re.compile(r"\btest_\w+")


def raw_keys(text: str) -> list[str]:
    return sorted(set(SNAKE_CASE.findall(TEST_NAME.sub(" ", FILE_NAME.sub(" ", text)))))


def test_raw_key_detector():
    assert raw_keys("final test accuracy 66.34 %; see ex4_few_shot.py, lab_cam.json, test_q1_conv_is_linear") == []
    assert raw_keys("the final_test_acc is 0.66 and border_share 0.3") == ["border_share", "final_test_acc"]


# ----------------------------------------------------------------------------- the README tables (no Typst)
def table_rows(table: str) -> dict[str, list[str]]:
    """first column -> [metric, result] of a Markdown table."""
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


MISSING = re.compile(r"(^|[\s(/;])–($|[\s)/;,])")  # the "–" of a missing value, not the dash of a range


def test_readme_tables_read_every_row_from_the_results(tmp_path):
    mod = _build_module()
    synthetic_results(tmp_path)
    tables = mod.readme_tables(mod.load_results(tmp_path / "results"))
    results, speed = table_rows(tables["results"]), table_rows(tables["speed"])
    assert [len(results), len(speed)] == [len(rows) for _, rows in mod.README_TABLES.values()]
    assert results["ex1 autoencoder, d=12"] == [
        "test mean-L1 over 3 seeds, conv+FC / conv-only; paired difference; PCA-12",
        "0.0291 [0.0285, 0.0297] / 0.0337 [0.0329, 0.0345]; -0.0046 [-0.0056, -0.0036] (lower); 0.0948"]
    assert results["ex2 classifier"][1] == ("99.26 [99.14, 99.38] %; +0.02 [-0.04, +0.08] pts "
                                            "(no significant difference)")
    assert results["ex4 100 labels, from scratch"] == ["test accuracy over 10 seeds", "65.43 [61.43, 69.43] %"]
    assert results["lab DB-VAE"][1] == "+3.1 [+1.6, +4.6] (no significant difference) / +3.1 [+1.6, +4.6] (higher)"
    assert results["lab DB-VAE, rare feature (dimmed faces)"][1] == "+3.1 [+1.6, +4.6] (higher) / +3.1 [+1.6, +4.6] " \
        "(higher); 60 [20, 95] %"
    assert speed["CAM CNN training (`python -m common.bench`)"][1] == "2,100 → 4,200 (2.00×); bf16"
    assert speed["full pipeline (`python -m common.pipeline`)"] == [
        "wall time of all stages on Some CPU (fp32 matmul peak 123 GFLOP/s)", "3600 s"]
    assert not any(MISSING.search(" ".join(c)) for t in (results, speed) for c in t.values())


def test_readme_tables_from_the_committed_results_have_no_gaps():
    mod = _build_module()
    tables = mod.readme_tables(mod.load_results(REPO / "report" / "results"))
    rows = {name: cells for t in tables.values() for name, cells in table_rows(t).items()}
    gaps = {name: cells[1] for name, cells in rows.items() if MISSING.search(cells[0] + " " + cells[1])}
    assert not gaps, gaps


def _mutate(obj, leaf):
    if isinstance(obj, dict):
        return {k: _mutate(v, leaf) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mutate(v, leaf) for v in obj]
    return leaf(obj)


@pytest.mark.parametrize("leaf", [lambda v: None, lambda v: "n/a", lambda v: [v], lambda v: {"v": v}, lambda v: True],
                         ids=["null", "string", "list", "dict", "bool"])
def test_readme_tables_show_a_gap_for_a_value_of_the_wrong_type(tmp_path, leaf):
    mod = _build_module()
    synthetic_results(tmp_path)
    for p in (tmp_path / "results").glob("*.json"):
        p.write_text(json.dumps(_mutate(json.loads(p.read_text()), leaf)))
    for tables in (mod.readme_tables(mod.load_results(tmp_path / "results")), mod.readme_tables({})):
        text = "\n".join(tables.values())
        assert len(text.splitlines()) == sum(2 + len(rows) for _, rows in mod.README_TABLES.values())
        assert not re.search(r"\['|\{'|\bTrue\b|\bNone\b", text), "a raw JSON value in the README table"


def test_update_readme_rewrites_only_between_the_markers(tmp_path, monkeypatch):
    mod = _build_module()
    readme = tmp_path / "README.md"
    monkeypatch.setattr(mod, "README", readme)
    monkeypatch.setattr(mod, "readme_tables", lambda results: {"results": "| new \\1 |", "speed": "| fast |"})
    (r0, r1), (s0, s1) = mod.markers("results"), mod.markers("speed")
    readme.write_text(f"head\n{r0}\nold\n{r1}\nmiddle {r1}\n{s0}\nslow\n{s1}\n")
    assert mod.update_readme({}) is True
    assert readme.read_text() == f"head\n{r0}\n| new \\1 |\n{r1}\nmiddle {r1}\n{s0}\n| fast |\n{s1}\n"
    assert mod.update_readme({}) is False  # unchanged: not rewritten
    readme.write_text("no markers\n")
    assert mod.update_readme({}) is False and readme.read_text() == "no markers\n"


# ----------------------------------------------------------------------------- build.py's helpers
def test_provenance_table_has_a_row_per_result_and_warns_where_head_did_not_make_it(capsys):
    """A result made at HEAD on a clean tree is current; one from a dirty tree or without provenance is not, with one
    warning line each; a file no stage writes (pipeline.json) has no stage and no warning."""
    mod = _build_module()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    prov = {**PROV, "commit": head, "precision": "bf16", "torch": "2.x"}
    rows = mod.provenance_table({"ex1": {"provenance": prov, "wall_time_s": 12.5},
                                 "lab_cam": {"provenance": {**prov, "dirty": True}}, "ex2": {"test_acc": 0.99},
                                 "pipeline": {"provenance": prov, "total_s": 3.0}})
    assert rows[0] == {"result": "ex1", "stage": "ex1", "commit": head[:7], "dirty": False, "cpu": "Some CPU",
                       "simd": "AVX512", "threads": 2, "device": "cpu", "precision": "bf16", "wall_time_s": 12.5,
                       "current": True}
    assert [(r["stage"], r["current"]) for r in rows[1:]] == [("lab_cam", False), ("ex2", False), (None, None)]
    warnings = capsys.readouterr().err.splitlines()
    assert [w.split()[1] for w in warnings] == ["results/lab_cam.json", "results/ex2.json"]
    assert "dirty" in warnings[0] and "no provenance commit" in warnings[1]


def test_get_and_fmt_return_the_gap_mark_for_anything_but_a_finite_number():
    mod = _build_module()
    d = {"a": {"b": [0.5, {"c": 3}]}, "s": "text"}
    assert mod.get(d, "a", "b", 1, "c") == 3 and mod.get(d, "a", "b", -2) == 0.5
    for path in [("x",), ("a", "b", 2), ("a", "b", "c"), ("s", "t"), ("a", "b", 0, "c")]:
        assert mod.get(d, *path, default="?") == "?", path  # missing, out of range or of the wrong type
    assert [mod.fmt(v) for v in (0.25, 3, float("nan"), float("inf"), True, None, "0.2", [0.2])] == [
        "0.2500", "3.0000", "–", "–", "–", "–", "–", "–"]
    assert mod.fmt(0.9931, ".2f", 100, " %") == "99.31 %" and mod.fmt(5200.0, ",.0f") == "5,200"
    assert mod.fmt_ci({"mean_diff": -0.045, "ci95": [-0.06, -0.03]}, "mean_diff", "+.2f", 100, " pts") == \
        "-4.50 [-6.00, -3.00] pts"
    assert mod.fmt_ci({"mean": 0.5, "ci95": [0.4]}) == "–"  # half a confidence interval is none


def test_load_results_keeps_json_objects_only(tmp_path, capsys):
    mod = _build_module()
    for name, text in {"ok": '{"a": NaN}', "broken": "{ half", "array": "[1, 2]", "number": "3"}.items():
        (tmp_path / f"{name}.json").write_text(text)
    assert mod.load_results(tmp_path) == {"ok": {"a": None}}  # NaN read as null; the others count as missing
    assert "broken.json" in capsys.readouterr().err


def test_committed_pdf_is_at_most_3_mb():  # the photo grids go in as JPEG (build.print_copies); PNG made it 6.5 MB
    assert (REPO / "report" / "ex2.pdf").stat().st_size <= 3 * 1024 ** 2
