"""The report builds (python report/build.py) with the current results, with none, and with a synthetic
full set that exercises every section; the PDF text holds every theory and practical heading."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

pytest.importorskip("typst")
pypdf = pytest.importorskip("pypdf")

BUILD = REPO / "report" / "build.py"
THEORY_HEADINGS = [
    "Q1. Convolution is linear and time/space invariant",
    "Q2. Which layers are time/space invariant?",
    "(a) Additive constant", "(b) Pointwise non-linearity", "(c) Strided pooling", "(d) Is a CNN time invariant?",
    "Q3. Jacobians of the basic layers",
    "(a) Additive bias", "(b) Matrix multiplication", "(c) Convolution layer",
]
PRACTICAL_HEADINGS = [
    "Summary of results", "Exercise 1: convolutional autoencoder", "Exercise 2: classifier from the encoder",
    "Exercise 3: what the two encoders keep", "Exercise 4: classifier trained on 100 labelled images",
    "Exercise 5: pretrained encoder with 100 labels", "Lab: debiasing a face detector (DB-VAE)",
    "Lab: class activation maps (CAM)", "References",
]
FIGURES = ["ex1_reconstructions.png", "ex1_loss.png", "ex2_curves.png", "ex2_baselines.png", "ex3_digits.png",
           "ex3_tsne.png", "ex4_curves.png", "ex4_curves_time.png", "ex45_compare.png", "ex45_compare_time.png",
           "lab_dbvae_groups.png", "lab_dbvae_paired.png",
           "lab_dbvae_sampling.png", "lab_cam_overview.png",
           "lab_cam_curves.png", "lab_cam_gradcam.png"]


def _build_module():
    spec = importlib.util.spec_from_file_location("report_build", BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pdf_text(path) -> str:
    text = "\n".join(page.extract_text() or "" for page in pypdf.PdfReader(str(path)).pages)
    return " ".join(text.split())  # line breaks inside a heading become spaces


def run_build(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BUILD), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_headings(text: str):
    for h in THEORY_HEADINGS + PRACTICAL_HEADINGS:
        assert h in text, f"heading {h!r} missing from the PDF text"


def _hist(n, acc=True):
    rows = []
    for e in range(1, n + 1):
        r = {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e + 0.01 * e, "epoch_time_s": 1.5,
             "train_time_s": 1.5 * e, "lr": 1e-3}
        if acc:
            r.update(train_acc=min(1.0, 0.5 + 0.1 * e), test_acc=0.5 + 0.04 * e)
        rows.append(r)
    return rows


def _dbvae_synthetic(ms) -> dict:
    """lab_dbvae.json as lab_dbvae.py writes it: metrics per model and test set with
    summarize() dicts, the paired comparison block, the standard CNN's gap, the sampling diagnostic."""
    groups = ["LF", "LM", "DF", "DM"]
    summ = lambda m, s=0.01: {"mean": m, "std": s, "ci95": [m - 2 * s, m + 2 * s], "n": 8, "values": [m] * 8}  # noqa: E731
    def test_set(base, mit=False):
        d = {"detect": {g: summ(base - 0.05 * i) for i, g in enumerate(groups)},
             "auc": {g: summ(0.99) for g in groups}, "mean_p_face": {g: summ(0.9) for g in groups},
             "group_var": summ(12.5, 2.0), "dark_gap": summ(7.5, 1.0), "threshold": summ(1.2),
             "n": {g: 15 for g in groups}}
        if mit:
            d["wilson"] = {g: {"rate": 0.6, "k": 9, "n": 15, "ci95": [0.36, 0.8]} for g in groups}
        return d
    model = lambda b: {"aligned": test_set(b), "jittered": test_set(b - 0.05), "mit": test_set(b - 0.2, True)}  # noqa: E731
    cmp = lambda name: {"endpoint": name, "standard": summ(12.5, 2.0), "dbvae": summ(8.0, 2.0), "mean_diff": -4.5,  # noqa: E731
                        "ci95": [-6.0, -3.0], "p_value": 0.0078, "verdict": "lower", "n_seeds": 8, "alpha": 0.05,
                        "per_seed_diff": [-4.5] * 8}
    return {"groups": groups, "seeds": list(range(8)),
            "metrics": {"standard": model(0.95), "dbvae": model(0.96), "standard_nodark": model(0.94)},
            "comparison": {t: cmp("group variance") for t in ("aligned", "jittered", "mit")},
            "secondary": {"dark_gap": {t: cmp("dark gap") for t in ("aligned", "jittered", "mit")},
                          "control_vs_standard": {t: cmp("group variance") for t in ("aligned", "jittered", "mit")}},
            "standard_gap_jittered": {**summ(7.5, 1.0), "bootstrap_ci95": [6.0, 9.0], "measurable": True},
            "sampling": {"dark_share_of_faces": 0.01,
                         "per_epoch": [{"epoch": e, "dark_mass": summ(0.02, 0.001), "mass_over_share": 2.0,
                                        "dark_mean_p_percentile": summ(60.0),
                                        "dark_sampling_mass_if_product": summ(0.3)}
                                       for e in (1, 2)]},
            "primary_endpoint": {"name": "jittered_group_var", "definition": "group variance on the jittered test"},
            "data": {"counts": {"train_faces": {"standard": 2000}, "train_nonfaces": 5737, "test_nonfaces": 2363,
                                "aligned_LF": 1000, "mit_LF": 15},
                     "dark_fractions": {"standard": 0.01, "dbvae": 0.01, "standard_nodark": 0.0},
                     "augmentation": {"train": {"max_shift": 6.0, "zoom_lo": 0.85, "zoom_hi": 1.15, "max_deg": 10.0}}},
            "config": {"epochs": 2, "combine": "max"},
            "paper_reference": {"group_variance": [28.84, 9.43], "precision": [95.13, 97.36], "alpha": 0.001},
            "wall_time_s": 600.0}


def synthetic_results(d):
    """Every result file, in the schemas the scripts write (numbers and {mean, std} forms mixed)."""
    ms = lambda m, s: {"mean": m, "std": s, "values": [m - s, m + s]}  # noqa: E731
    ci = lambda m, s: {"mean": m, "std": s, "ci95": [m - 2 * s, m + 2 * s], "values": [m - s, m + s]}  # noqa: E731
    diff = lambda d, lo, hi, p, w: {"mean_diff": d, "ci95": [lo, hi], "p_value": p, "verdict": w}  # noqa: E731
    res = {
        "ex1": {"latent_dim": 12, "variants": {
            "conv": {"test_l1": 0.061, "params": 193156, "collapsed": False, "latent_shape": [12]},
            "conv_fc": {"test_l1": 0.052, "params": 237069, "collapsed": True, "latent_shape": [12]}},
            "pca_test_l1": 0.095, "pca_test_l1_clipped": 0.086, "all_black_test_l1": 0.1307,
            "history": {"conv": _hist(3, False), "conv_fc": _hist(3, False)}, "config": {}, "wall_time_s": 321.5},
        "ex2": {"test_acc": 0.9931, "test_loss": 0.021, "params": 119190, "history": _hist(4),
                "baselines": {n: {"test_acc": a, "params": p, "history": _hist(4)} for n, a, p in
                              (("lab2_cnn", 0.9902, 124670), ("lab_mlp", 0.975, 55050), ("skip_mlp", 0.978, 67530))},
                "config": {}},
        "ex3": {"ae_test_l1": 0.052, "cls_decoder_test_l1": 0.121, "silhouette": {"ae": 0.11, "cls": 0.62},
                "within_class": {"ae": 3.1, "cls": 1.2}, "between_class": {"ae": 4.0, "cls": 6.5},
                "knn_acc": {"ae": 0.95, "cls": 0.99},
                "per_class_within": {"ae": [3.0 + i / 10 for i in range(10)],
                                     "cls": [1.0 + i / 20 for i in range(10)]}},
        "ex4": {"train_indices": list(range(100)), "train_class_counts": [10] * 10, "seeds": [0, 1, 2],
                "final_test_acc": ci(0.71, 0.02), "final_test_loss": ci(1.3, 0.1), "final_gap_acc": ci(0.29, 0.01),
                "curve_test_size": 1000, "final_test_size": 10000, "params": 119190,
                "overfitting": {"epoch_min_test_loss": 40, "epoch_train_acc_100": 25, "test_loss_rise": 0.35},
                "config": {"epochs": 150, "lr": 0.001, "batch_size": 100, "eval_every": 10, "curve_test_size": 1000},
                "recipe": {"optimizer": "AdamW", "schedule": "constant", "epochs": 150, "lr": 0.001},
                "history": {"0": _hist(3)}, "mean_history": _hist(3)},
        "ex5": {"train_indices": list(range(100)), "seeds": [0, 1, 2], "config": {"encoder_lr_ratio": 0.1},
                "variants": {
                    "scratch": {"label": "ex4: from scratch", "final_test_acc": ci(0.71, 0.02),
                                "final_test_loss": ci(1.3, 0.1)},
                    "finetune": {"label": "ex5", "final_test_acc": ci(0.83, 0.015), "final_test_loss": ci(0.7, 0.05),
                                 "vs_scratch": diff(0.12, 0.08, 0.16, 0.001, "higher"),
                                 "vs_scratch_loss": diff(-0.6, -0.7, -0.5, 0.001, "lower")},
                    "frozen_encoder": {"label": "frozen", "final_test_acc": ci(0.86, 0.01),
                                       "final_test_loss": ci(0.5, 0.05),
                                       "vs_scratch": diff(0.15, 0.1, 0.2, 0.001, "higher")}},
                "comparisons": {name: {"acc": diff(a, a - 0.02, a + 0.02, 0.01, w),
                                       "loss": diff(0, -0.1, 0.1, 0.9, "no significant difference")}
                                for name, a, w in (("finetune - frozen_encoder", -0.03, "lower"),
                                                   ("finetune_lowlr - frozen_encoder", -0.01, "lower"),
                                                   ("finetune_lowlr - finetune", 0.02, "higher"))},
                "goal_finetune_plus_10": {"mean_diff": 0.12, "ci95": [0.08, 0.16], "met": True, "ci_excludes_5": True}},
        "ex5_selftrain": {"seeds": [0, 1, 2], "config": {"rounds": [0.5, 1.0], "neighbours": 15, "round_epochs": 4,
                                                         "device": "cpu"}, "wall_time_s": 600.0,
                          "variants": {"scratch": {"final_test_acc": ci(0.71, 0.02)},
                                       "selftrain": {"final_test_acc": ci(0.972, 0.004),
                                                     "final_test_loss": ci(0.13, 0.01),
                                                     "vs_scratch": diff(0.26, 0.25, 0.27, 0.0001, "higher")}}},
        "lab_dbvae": _dbvae_synthetic(ms),
        "lab_cam": {"val_acc": 0.81, "history": _hist(2), "classes": ["tench", "English springer", "cassette player"]},
        "bench": {"ae": {"ours_img_s": 5200.0, "baseline_img_s": 2100.0, "speedup": 2.48, "frac_of_matmul_peak": 0.31},
                  "classifier": {"ours_img_s": 8000.0, "baseline_img_s": 3000.0, "speedup": 2.67},
                  "matmul_gflops": 95.2},
    }
    (d / "results").mkdir(parents=True)
    (d / "figures").mkdir()
    for name, obj in res.items():
        (d / "results" / f"{name}.json").write_text(json.dumps(obj))
    return res


def _tiny_png(path):
    from PIL import Image
    Image.new("RGB", (40, 20), (200, 60, 60)).save(path)


@pytest.mark.slow
def test_build_with_current_results(tmp_path):
    report = REPO / "report"
    for sub in ("results", "figures"):  # a copy, so a concurrent experiment writing there cannot interfere
        src = report / sub
        if src.is_dir():
            shutil.copytree(src, tmp_path / sub)
    out = tmp_path / "ex2.pdf"
    run_build("--out-dir", tmp_path, "--pdf", out)
    assert out.stat().st_size > 10_000
    assert_headings(pdf_text(out))


@pytest.mark.slow
def test_build_with_no_results_names_the_scripts(tmp_path):
    (tmp_path / "results").mkdir()
    proc = run_build("--out-dir", tmp_path, "--pdf", tmp_path / "empty.pdf")  # no figures/ either
    for name in ("ex1", "ex2", "ex3", "ex4", "ex5", "lab_dbvae", "lab_cam"):
        assert f"missing {name}:" in proc.stdout
    assert "missing ex1: run `python ex1_autoencoder.py`" in proc.stdout
    text = pdf_text(tmp_path / "empty.pdf")
    assert_headings(text)
    assert "Result not available yet" in text
    assert "python ex1_autoencoder.py" in text.replace("python  ", "python ")
    assert "not run" in text


@pytest.mark.slow
def test_build_with_full_synthetic_results(tmp_path):
    synthetic_results(tmp_path)
    for f in FIGURES:
        _tiny_png(tmp_path / "figures" / f)
    info = _build_module().build(tmp_path / "full.pdf", tmp_path / "results", tmp_path / "figures")
    assert not info["missing"] and set(info["figures"]) == set(FIGURES)
    text = pdf_text(tmp_path / "full.pdf")
    assert_headings(text)
    assert "Result not available yet" not in text and "not run" not in text
    # numbers really come from the JSON files, in both the plain and the {mean, std} form
    for s in ("99.31%", "0.0520", "193,156", "71.00 % [67.00, 75.00]", "83.00 % [80.00, 86.00]",
              "+12.00 pts [+8.00, +16.00]", "88.18%", "81.00%", "2.5×", "97.20 % [96.40, 98.00]"):
        assert s in text, s
    # ex5's words come from the JSON: the goal flags and the paired verdicts
    flat = text.replace("\n", " ")
    assert "+10 points is met" in flat and "The rest of the gap is still significant" in flat
    assert "recovers 67 % of the accuracy" in flat  # (+0.02) / (0.03): computed from the two differences
    # the DB-VAE section reads the comparison block: values, p and the computed verdict word
    for s in ("12.50 %2 for the standard CNN and 8.00 %2 for the DB-VAE", "p = 0.008", "variance is lower than",
              "the gap is measurable", "2.0× their share", "0.85–1.15"):
        assert s in text.replace("%²", "%2").replace(" ²", "2"), s
    # ex2's comparison word comes from the binomial standard error (0.29 points apart, SE of the difference 0.13)
    assert "ours is higher" in text
    # ex1's latent code is derived from the model config: the conv-only code is a 3 x 2 x 2 map flattened to 12
    assert "3 × 2 × 2 → 12" in text
    # ex3's text reads the direction from the numbers (cls is more separated, ae more variable)
    assert "better separated in the classifier" in text
    assert "in-class variability is higher for the autoencoder" in text


@pytest.mark.slow
def test_build_ignores_a_broken_result_file(tmp_path):
    synthetic_results(tmp_path)
    (tmp_path / "results" / "ex3.json").write_text("{ half-written")
    (tmp_path / "results" / "ex4.json").write_text(json.dumps({"unexpected": "schema"}))  # every key missing
    # Python's json writes NaN for a nan float; Typst's strict parser would reject the whole file
    (tmp_path / "results" / "ex5.json").write_text('{"final_test_acc": {"mean": NaN, "std": 0.1}, "seeds": [1]}')
    info = _build_module().build(tmp_path / "b.pdf", tmp_path / "results", tmp_path / "figures")
    assert "ex3" in info["missing"] and "ex4" not in info["missing"] and "ex5" not in info["missing"]
    text = pdf_text(tmp_path / "b.pdf")
    assert_headings(text)
    assert "Runs: 1 seed (1)" in text  # ex5 section rendered from the cleaned copy


def _mutate(obj, leaf):
    if isinstance(obj, dict):
        return {k: _mutate(v, leaf) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mutate(v, leaf) for v in obj]
    return leaf(obj)


@pytest.mark.parametrize("leaf", [lambda v: None, lambda v: "n/a", lambda v: [v], lambda v: {"v": v}],
                         ids=["null", "string", "list", "dict"])
@pytest.mark.slow
def test_build_survives_unexpected_value_types(tmp_path, leaf):
    """Every number replaced by null / a string / a list / a dict: the build must still succeed."""
    res = synthetic_results(tmp_path)
    for name, obj in res.items():
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(_mutate(obj, leaf)))
    _build_module().build(tmp_path / "m.pdf", tmp_path / "results", tmp_path / "figures")
    assert_headings(pdf_text(tmp_path / "m.pdf"))


@pytest.mark.slow
def test_build_survives_wrong_container_types(tmp_path):
    synthetic_results(tmp_path)
    bad = {"variants": [1, 2], "baselines": 3, "history": {"a": 1}, "groups": "LF", "overfitting": [0],
           "per_class_within": {"ae": [1.0], "cls": [1.0, 2.0]}, "silhouette": 0.5, "classes": "abc",
           "seeds": 3, "train_indices": 5, "ae": 1, "standard": [], "dbvae": "x", "final_test_acc": [0.5]}
    for name in ("ex1", "ex2", "ex3", "ex4", "ex5", "lab_dbvae", "lab_cam", "bench"):
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(bad))
    _build_module().build(tmp_path / "w.pdf", tmp_path / "results", tmp_path / "figures")
    assert_headings(pdf_text(tmp_path / "w.pdf"))


# Names the report legitimately shows as code (monospace): the ex1 and ex5 variant names. Any other
# snake_case word in the PDF text is a raw JSON key leaking into the prose. File names (foo_bar.py,
# lab_cam.json, ...) are removed before the check.
ALLOWED_SNAKE_CASE = {"conv_fc", "finetune_lowlr", "frozen_encoder", "finetune_augment", "frozen_augment"}
SNAKE_CASE = re.compile(r"\b[a-z]+_[a-z_]+\b")
FILE_NAME = re.compile(r"[\w./-]+\.(?:py|json|png|pt|typ|pdf)\b")


def raw_keys(text: str) -> list[str]:
    return sorted(set(SNAKE_CASE.findall(FILE_NAME.sub(" ", text))) - ALLOWED_SNAKE_CASE)


def test_raw_key_detector():
    assert raw_keys("final test accuracy 66.34 %; variant finetune_augment; see ex4_few_shot.py, lab_cam.json") == []
    assert raw_keys("the final_test_acc is 0.66 and border_share 0.3") == ["border_share", "final_test_acc"]


@pytest.mark.slow
def test_built_report_has_no_raw_keys_or_ascii_arrows_and_places_every_figure(tmp_path):
    """Built from the committed results and figures, the PDF text shows no raw snake_case JSON keys and no
    ASCII '<=' / '->' / '>='; every figure the scripts write into report/figures/ is either placed by ex2.typ
    or listed, with a reason, in build.py's UNUSED_FIGURES."""
    report = REPO / "report"
    for sub in ("results", "figures"):  # a copy, so a concurrent experiment writing there cannot interfere
        if (report / sub).is_dir():
            shutil.copytree(report / sub, tmp_path / sub)
    out = tmp_path / "ex2.pdf"
    run_build("--out-dir", tmp_path, "--pdf", out)
    text = pdf_text(out)
    assert raw_keys(text) == [], f"raw JSON keys in the PDF text: {raw_keys(text)}"
    for ascii_op in ("<=", "->", ">="):
        assert ascii_op not in text, f"ASCII {ascii_op!r} in the PDF text (use ≤ / → / ≥ or words)"

    mod = _build_module()
    unused = mod.UNUSED_FIGURES
    assert all(isinstance(why, str) and why.strip() for why in unused.values()), "every unused figure needs a reason"
    placed = mod.placed_figures()
    assert not placed & set(unused), f"figures both placed and listed as unused: {sorted(placed & set(unused))}"
    assert mod.unplaced_figures(tmp_path / "figures") == [], \
        "figures in report/figures/ neither placed in ex2.typ nor listed in UNUSED_FIGURES"


# ----------------------------------------------------------------------------- the README table (no Typst)
def table_rows(table: str) -> dict[str, list[str]]:
    """first column -> [metric, result] of a Markdown results table."""
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


MISSING = re.compile(r"(^|[\s(/])–($|[\s)/;,])")  # the "–" of a missing value, not the dash of a range


def test_readme_table_reads_every_row_from_the_results(tmp_path):
    """One row per README_TABLES entry, in two tables; every number and count comes from the JSON (the bench,
    stacking and pipeline files in the schema the tools write now)."""
    mod = _build_module()
    synthetic_results(tmp_path)
    extra = {
        "bench": {"machine": {"cpu": "Some CPU", "threads": 2}, "matmul_peak": {"best_gflops": 10.0},
                  "ae": {"ours_img_s": 5200.0, "baseline_img_s": 2100.0, "speedup": 2.48, "train_flops_per_img": 5e5,
                         "options": {"channels_last": {"img_s": 6000.0, "ratio_vs_plain": 1.15}}}},
        "bench_stacking": {"step_ratio_stacked_over_plain": 2.0, "eval_ratio_stacked_over_plain": 0.5},
        "pipeline": {"machine": {"cpu": "Some CPU", "threads": 4, "simd": "AVX512"},
                     "matmul_peak": {"best_gflops": 123.4}, "total_s": 11.2,
                     "stages": [{"name": "ex1", "seconds": 10.2}, {"name": "report", "seconds": 1.0}]},
    }
    for name, obj in extra.items():
        (tmp_path / "results" / f"{name}.json").write_text(json.dumps(obj))
    table = mod.readme_table(mod.load_results(tmp_path / "results"))
    results, speed = (table_rows(t) for t in table.split("\n\n"))
    assert [len(results), len(speed)] == [len(rows) for _, rows in mod.README_TABLES]
    assert results["ex1 autoencoder, d=12"] == ["test mean-L1, conv+FC / conv-only / PCA-12",
                                                "0.0520 / 0.0610 / 0.0950"]
    assert results["ex2 classifier"][1] == "99.31 %"
    assert results["ex3 decoders"][1] == "0.0520 / 0.1210"
    assert results["ex4 100 labels, from scratch"][0].endswith("over 3 seeds")
    assert results["ex4 100 labels, from scratch"][1] == "71.00 [67.00, 75.00] %"
    assert results["ex5 100 labels, AE encoder fine-tuned"][1] == "83.00 [80.00, 86.00] %; +12.00 [+8.00, +16.00] pts"
    # the DB-VAE group variances are in %² already: no scaling, the difference signed
    assert results["lab DB-VAE"][1] == "12.50 → 8.00; -4.50 [-6.00, -3.00], p = 0.008 (lower)"
    assert results["lab CAM (Imagenette)"][1] == "81.00 %"
    pipe = results["full pipeline (`python -m common.pipeline`)"]
    assert pipe == ["wall time of all stages on Some CPU (fp32 matmul peak 123 GFLOP/s)", "11 s"]
    assert speed["AE training (`python -m common.bench`)"] == ["images/s, ours / DataLoader, on Some CPU",
                                                              "5,200 / 2,100 (2.48×)"]
    # 5e5 flops x 5200 img/s / 1e9 / 10 GFLOP/s = 26 %; with channels_last 6000 img/s: 30 %
    assert speed["AE training"] == ["share of the 10.0 GFLOP/s fp32 matmul peak: plain / channels_last",
                                    "26.00 % / 30.00 %"]
    assert speed["seed stacking for ex4 (`python -m common.bench --stacking`)"][1] == "2.00× / 0.50×"


def test_readme_table_from_the_committed_results_has_no_gaps():
    """The committed results/*.json fill every row."""
    mod = _build_module()
    tables = mod.readme_table(mod.load_results(REPO / "report" / "results")).split("\n\n")
    rows = {name: cells for t in tables for name, cells in table_rows(t).items()}
    gaps = {name: cells[1] for name, cells in rows.items() if MISSING.search(cells[0] + " " + cells[1])}
    assert not gaps, gaps


@pytest.mark.parametrize("leaf", [lambda v: None, lambda v: "n/a", lambda v: [v], lambda v: {"v": v}, lambda v: 7,
                                  lambda v: True], ids=["null", "string", "list", "dict", "int", "bool"])
def test_readme_table_survives_unexpected_value_types(tmp_path, leaf):
    mod = _build_module()
    synthetic_results(tmp_path)
    for p in (tmp_path / "results").glob("*.json"):
        p.write_text(json.dumps(_mutate(json.loads(p.read_text()), leaf)))
    (tmp_path / "results" / "pipeline.json").write_text(json.dumps({"stages": 3, "machine": []}))
    lines = 3 * len(mod.README_TABLES) - 1 + sum(len(rows) for _, rows in mod.README_TABLES)  # heads, blank lines
    table = mod.readme_table(mod.load_results(tmp_path / "results"))
    assert len(table.splitlines()) == lines
    assert not re.search(r"\['|\{'|\bTrue\b|\bNone\b", table), "a raw JSON value in the README table"
    assert len(mod.readme_table(mod.load_results(tmp_path / "nothing")).splitlines()) == lines


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


def test_unplaced_figures_are_found(tmp_path):
    mod = _build_module()
    placed = sorted(mod.placed_figures())
    assert "ex1_loss.png" in placed
    for name in (placed[0], "stray_plot.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert mod.unplaced_figures(tmp_path) == ["stray_plot.png"]


def test_load_results_keeps_json_objects_only(tmp_path, capsys):
    mod = _build_module()
    for name, text in {"ok": '{"a": NaN}', "broken": "{ half", "array": "[1, 2]", "number": "3"}.items():
        (tmp_path / f"{name}.json").write_text(text)
    assert mod.load_results(tmp_path) == {"ok": {"a": None}}  # NaN read as null; the others count as missing
    assert "broken.json" in capsys.readouterr().err


def test_update_readme_rewrites_only_between_the_markers(tmp_path, monkeypatch):
    mod = _build_module()
    readme = tmp_path / "README.md"
    monkeypatch.setattr(mod, "README", readme)
    monkeypatch.setattr(mod, "readme_table", lambda results: "| new \\1 |")  # a backslash stays as it is
    readme.write_text(f"head\n{mod.MARK_START}\nold\n{mod.MARK_END}\ntail {mod.MARK_END}\n")
    assert mod.update_readme({}) is True
    assert readme.read_text() == f"head\n{mod.MARK_START}\n| new \\1 |\n{mod.MARK_END}\ntail {mod.MARK_END}\n"
    assert mod.update_readme({}) is False  # unchanged: not rewritten
    readme.write_text("no markers\n")
    assert mod.update_readme({}) is False and readme.read_text() == "no markers\n"
