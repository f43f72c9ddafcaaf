"""Loss health report: metric-guide thresholds, the worked example, trends, phases, I/O, plots."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from amylm_jax import report
from amylm_jax.report.rules import RULES, canonical_name, check_epoch, classify, trend_of

# The worked example of docs/metrics.md as a training log prints it.
EXAMPLE = """\
train/adv_g_epoch:0.32181718945503235
train/feat_epoch:0.016863815486431122
train/llm_epoch:0.07964769005775452
train/loss_d_epoch:1.9732297658920288
train/loss_g_epoch:2.255605936050415
train/msspec_epoch:0.07455965131521225
train/wavlm_epoch:0.6682911515235901
"""

EPS = 1e-6

# (metric, value, expected status): values just below, at and just above every boundary of the
# quick-reference table. Convention: "< a" / "> b" open, "a - b" closed, ties to the milder one.
BOUNDARY_CASES = [
    ("llm_epoch", 0.1 - EPS, "good"),
    ("llm_epoch", 0.1, "warning"),
    ("llm_epoch", 0.1 + EPS, "warning"),
    ("llm_epoch", 0.3 - EPS, "warning"),
    ("llm_epoch", 0.3, "warning"),
    ("llm_epoch", 0.3 + EPS, "critical"),
    ("wavlm_epoch", 0.2 - EPS, "good"),
    ("wavlm_epoch", 0.2, "warning"),
    ("wavlm_epoch", 0.2 + EPS, "warning"),
    ("wavlm_epoch", 0.5 - EPS, "warning"),
    ("wavlm_epoch", 0.5, "warning"),
    ("wavlm_epoch", 0.5 + EPS, "critical"),
    ("msspec_epoch", 0.0, "good"),
    ("msspec_epoch", 0.1 - EPS, "good"),
    ("msspec_epoch", 0.1, "warning"),
    ("msspec_epoch", 0.1 + EPS, "warning"),
    ("msspec_epoch", 0.5 - EPS, "warning"),
    ("msspec_epoch", 0.5, "warning"),
    ("msspec_epoch", 0.5 + EPS, "critical"),
    ("feat_epoch", 0.05 - EPS, "good"),
    ("feat_epoch", 0.05, "warning"),
    ("feat_epoch", 0.05 + EPS, "warning"),
    ("feat_epoch", 0.2 - EPS, "warning"),
    ("feat_epoch", 0.2, "warning"),
    ("feat_epoch", 0.2 + EPS, "critical"),
    ("adv_g_epoch", -0.3, "warning"),
    ("adv_g_epoch", 0.1 - EPS, "warning"),
    ("adv_g_epoch", 0.1, "good"),
    ("adv_g_epoch", 0.1 + EPS, "good"),
    ("adv_g_epoch", 0.5 - EPS, "good"),
    ("adv_g_epoch", 0.5, "good"),
    ("adv_g_epoch", 0.5 + EPS, "warning"),
    ("adv_g_epoch", 1.0 - EPS, "warning"),
    ("adv_g_epoch", 1.0, "warning"),
    ("adv_g_epoch", 1.0 + EPS, "critical"),
    ("loss_d_epoch", 0.5 - EPS, "critical"),
    ("loss_d_epoch", 0.5, "warning"),
    ("loss_d_epoch", 0.5 + EPS, "warning"),
    ("loss_d_epoch", 1.5 - EPS, "warning"),
    ("loss_d_epoch", 1.5, "good"),
    ("loss_d_epoch", 1.5 + EPS, "good"),
    ("loss_d_epoch", 2.0 - EPS, "good"),
    ("loss_d_epoch", 2.0, "good"),
    ("loss_d_epoch", 2.0 + EPS, "warning"),
    ("loss_d_epoch", 3.0 - EPS, "warning"),
    ("loss_d_epoch", 3.0, "warning"),
    ("loss_d_epoch", 3.0 + EPS, "critical"),
    ("loss_g_epoch", 0.5, "good"),
    ("loss_g_epoch", 1.0, "good"),
    ("loss_g_epoch", 3.0 - EPS, "good"),
    ("loss_g_epoch", 3.0, "good"),
    ("loss_g_epoch", 3.0 + EPS, "warning"),
    ("loss_g_epoch", 5.0 - EPS, "warning"),
    ("loss_g_epoch", 5.0, "warning"),
    ("loss_g_epoch", 5.0 + EPS, "critical"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BOUNDARY_CASES)
def test_classify_boundaries(name, value, expected):
    assert classify(name, value) == expected
    assert classify(f"train/{name}", value) == expected


def test_boundary_table_covers_every_metric():
    assert {name for name, _, _ in BOUNDARY_CASES} == set(RULES)


def test_classify_edge_inputs():
    assert classify("llm", float("nan")) == "critical"
    assert classify("train/loss_d_step", 1.7) == "good"
    assert canonical_name("train/wavlm_step") == "wavlm_epoch"
    with pytest.raises(KeyError, match="lr"):
        classify("lr", 0.1)


def _example_report(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text(EXAMPLE)
    return report.build_report(report.load_run(path))


def test_metric_guide_example(tmp_path):
    rep = _example_report(tmp_path)
    statuses = {name: entry["status"] for name, entry in rep["metrics"].items()}
    assert statuses == {
        "llm_epoch": "good",
        "wavlm_epoch": "critical",
        "msspec_epoch": "good",
        "feat_epoch": "good",
        "adv_g_epoch": "good",
        "loss_d_epoch": "good",
        "loss_g_epoch": "good",
    }
    assert rep["metrics"]["llm_epoch"]["similarity"] == pytest.approx(0.92, abs=0.005)
    assert rep["metrics"]["wavlm_epoch"]["similarity"] == pytest.approx(0.33, abs=0.005)
    assert rep["ratios"]["adv_g/loss_g"]["value"] == pytest.approx(0.32181718945 / 2.25560593605)
    assert rep["ratios"]["adv_g/loss_g"]["in_range"] is False
    assert rep["ratios"]["wavlm/llm"]["value"] == pytest.approx(0.66829115 / 0.07964769)
    assert rep["phase"] == "adaptation"
    assert set(rep["trend"].values()) == {"n/a"}  # a single epoch has no trend
    assert [d["metric"] for d in rep["diagnosis"]] == ["wavlm_epoch"]
    fixes = " ".join(rep["diagnosis"][0]["fixes"])
    assert "--config.heads.wavlm=mlp" in fixes
    assert "--config.loss.alpha_wavlm=3.0" in fixes
    assert "--config.loss.adversarial_only=False" in fixes


def test_fixes_never_suggest_a_setting_in_force(tmp_path):
    """The worked example's WavLM fixes, for a run that already has two of them."""
    path = tmp_path / "log.txt"
    path.write_text(EXAMPLE)
    log = report.load_run(path)
    log.config = {"loss": {"adversarial_only": False, "alpha_wavlm": 1.0}, "heads.wavlm": "mlp"}
    fixes = report.build_report(log)["diagnosis"][0]["fixes"]
    assert fixes == ["increase the WavLM weight (2.0-5.0): --config.loss.alpha_wavlm=3.0"]
    # A run already at the suggested weight gets no fix that changes nothing; D's fixes lose
    # their "or" when the first alternative is already in force.
    log.config["loss"]["alpha_wavlm"] = 3
    assert report.build_report(log)["diagnosis"][0]["fixes"] == []
    rep = report.build_report(
        dataclasses.replace(
            log,
            config={"disc": {"filters": 16}},
            epochs={**log.epochs, "loss_d_epoch": [(0, 1.2)]},
        )
    )
    (d_strong,) = [d for d in rep["diagnosis"] if d["metric"] == "loss_d_epoch"]
    assert d_strong["fixes"] == ["increase the adversarial weight: --config.loss.alpha_adv=1.5"]


def test_text_table(tmp_path):
    text = report.format_report(_example_report(tmp_path))
    assert "wavlm_epoch" in text and "critical" in text
    assert "--config.heads.wavlm=mlp" in text
    assert "0.920" in text  # llm similarity


def _write_jsonl(path, records, tail=""):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n" + tail)


def _run_records(n_epochs=4, steps_per_epoch=3, adversarial_only=False):
    """A small run: llm and msspec fall, wavlm rises, loss_d flat, plus keys to be ignored."""
    records = [{"step": 0, "config": {"loss": {"adversarial_only": adversarial_only}}}]
    step = 0
    for epoch in range(n_epochs):
        llm, wavlm = 0.2 - 0.03 * epoch, 0.3 + 0.05 * epoch
        msspec = 0.0 if adversarial_only else 0.3 - 0.05 * epoch
        for _ in range(steps_per_epoch):
            step += 1
            records.append(
                {
                    "step": step,
                    "train/llm_step": llm,
                    "train/msspec_step": msspec,
                    "train/lr_g": 3e-4,
                    "train/codebook/entropy_3": 7.5,
                    "train/grad_norm_g": 1.2,
                }
            )
        records.append(
            {
                "step": step,
                "epoch": epoch,
                "train/llm_epoch": llm,
                "train/wavlm_epoch": wavlm,
                "train/msspec_epoch": msspec,
                "train/loss_d_epoch": 1.75,
                "train/adv_g_epoch": 0.3,
                "train/feat_epoch": 0.03,
                "train/loss_g_epoch": 2.0,
                "train/d_real_acc_epoch": 0.9,
                "train/d_fake_acc_epoch": 0.6,
            }
        )
        records.append({"step": step, "val/llm": llm + 0.01})
    return records


def test_jsonl_trends_and_phase(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_jsonl(path, _run_records(), tail='{"step": 99, "train/llm')  # live, half-written
    rep = report.build_report(report.load_run(path))
    assert rep["phase"] == "adaptation"
    assert rep["trend"]["llm_epoch"] == "improving"
    assert rep["trend"]["msspec_epoch"] == "improving"
    assert rep["trend"]["wavlm_epoch"] == "worsening"
    assert rep["trend"]["loss_d_epoch"] == "flat"
    assert rep["metrics"]["llm_epoch"]["value"] == pytest.approx(0.11)
    assert rep["metrics"]["llm_epoch"]["note"] == "epoch 3"
    assert rep["validation"]["llm"] == pytest.approx(0.12)
    assert rep["skipped_lines"] == 1
    issues = {d["metric"] for d in rep["diagnosis"]}
    assert "d_real_acc_epoch" in issues and "d_fake_acc_epoch" not in issues


def test_adversarial_only_phase_and_audio_tip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_jsonl(path, _run_records(adversarial_only=True))
    rep = report.build_report(report.load_run(path))
    assert rep["phase"] == "adversarial fine-tuning"
    assert "adversarial_only" in rep["metrics"]["msspec_epoch"]["note"]
    assert any("audio" in d["issue"].lower() for d in rep["diagnosis"])


def test_curriculum_phase_takes_its_overrides(tmp_path):
    """A curriculum run's records carry their phase; the report reads the config as that phase
    trains (the logged config lists each phase's overrides as key/value pairs)."""
    records = _run_records()
    adv_only = [["loss.adversarial_only", True]]
    phases = [{"name": "adapt", "steps": 3, "overrides": []},
              {"name": "adv", "steps": 0, "overrides": adv_only}]  # fmt: skip
    records[0]["config"]["phases"] = phases
    log = report.records_to_log(records, "mem")
    assert log.curriculum_phase is None and report.detect_phase(log)[0] == "adaptation"
    tagged = [{**r, "phase": "adv"} if "config" not in r else r for r in records]
    log = report.records_to_log(tagged, "mem")
    assert log.curriculum_phase == "adv"
    assert report.detect_phase(log)[0] == "adversarial fine-tuning"
    rep = report.build_report(log)
    assert "curriculum phase 'adv'" in rep["phase_reason"]
    assert records[0]["config"]["loss"].get("adversarial_only") is not True  # not mutated


def test_phase_from_msspec_without_config(tmp_path):
    records = [r for r in _run_records(adversarial_only=True) if "config" not in r]
    log = report.records_to_log(records, "mem")
    assert report.detect_phase(log)[0] == "adversarial fine-tuning"
    log = report.records_to_log([r for r in _run_records() if "config" not in r], "mem")
    assert report.detect_phase(log)[0] == "adaptation"


def test_llm_worsening_triggers_metric_guide_fix():
    records = [
        {"step": e, "epoch": e, "train/llm_epoch": v} for e, v in enumerate([0.05, 0.06, 0.08])
    ]
    rep = report.build_report(report.records_to_log(records, "mem"))
    assert rep["metrics"]["llm_epoch"]["status"] == "good"
    assert rep["trend"]["llm_epoch"] == "worsening"
    (diag,) = [d for d in rep["diagnosis"] if d["metric"] == "llm_epoch"]
    assert "increasing" in diag["issue"]
    assert any("--config.loss.alpha_llm" in f for f in diag["fixes"])
    assert any("--config.loss.alpha_adv" in f for f in diag["fixes"])


def test_trend_of_target_and_window():
    assert trend_of([0.3]) == "n/a"
    assert trend_of([1.0, 1.0, 1.001]) == "flat"
    assert trend_of([1.2, 1.4, 1.6], target=1.75) == "improving"
    assert trend_of([2.1, 2.3, 2.6], target=1.75) == "worsening"
    assert trend_of([9.0, 0.5, 0.4, 0.3], window=3) == "improving"


def test_step_fallback_and_missing(tmp_path):
    records = [{"step": s, "train/llm_step": 0.4 if s < 100 else 0.2} for s in range(160)]
    rep = report.build_report(report.records_to_log(records, "mem"))
    llm = rep["metrics"]["llm_epoch"]
    assert llm["source"] == "step_mean"
    assert llm["value"] == pytest.approx(0.2)  # only the last 50 step values
    assert "no epoch record yet" in llm["note"]
    assert llm["status"] == "warning"
    assert rep["metrics"]["wavlm_epoch"]["status"] == "missing"
    assert rep["metrics"]["wavlm_epoch"]["value"] is None
    assert rep["ratios"]["wavlm/llm"]["value"] is None
    assert "missing" in report.format_report(rep)


@pytest.mark.parametrize(
    ("values", "issue", "flag"),
    [
        ({"loss_d_epoch": 0.3}, "too strong", "--config.disc.filters=16"),
        ({"loss_d_epoch": 0.3}, "too strong", "--config.loss.alpha_adv=1.5"),
        ({"loss_d_epoch": 3.5}, "too weak", "--config.optim.lr_d="),
        ({"adv_g_epoch": 0.05}, "low", "--config.optim.lr_d="),
        ({"feat_epoch": 0.3}, "Feature matching", "discriminator feature maps"),
        ({"msspec_epoch": 0.7}, "reconstruction", "--config.loss.alpha_msspec"),
    ],
)
def test_out_of_range_diagnoses(values, issue, flag):
    records = [{"step": 1, "epoch": 0, **{f"train/{k}": v for k, v in values.items()}}]
    rep = report.build_report(report.records_to_log(records, "mem"))
    (diag,) = [d for d in rep["diagnosis"] if d["metric"] in values]
    assert issue in diag["issue"]
    assert any(flag in fix for fix in diag["fixes"])


def test_check_epoch_live():
    lines = check_epoch(
        {
            "train/llm_epoch": 0.05,
            "train/wavlm_epoch": 0.7,
            "train/loss_d_epoch": 0.2,
            "train/feat_epoch": 0.1,  # warning only: not reported live
            "train/lr_g": 5.0,
            "train/loss_g_step": 99.0,  # step values are not epoch metrics
            "train/msspec_epoch": math.nan,
        }
    )
    assert len(lines) == 3
    text = "\n".join(lines)
    assert "wavlm_epoch" in text and "--config.heads.wavlm=mlp" in text
    assert "--config.disc.filters=16" in text
    assert "msspec_epoch" in text and "not finite" in text
    assert check_epoch({"llm_epoch": 0.05}) == []


def test_cli_json_workdir_and_plots(tmp_path, capsys):
    mpl_image = pytest.importorskip("matplotlib.image")
    workdir = tmp_path / "run"
    workdir.mkdir()
    _write_jsonl(workdir / "metrics.jsonl", _run_records(n_epochs=3))
    plots = tmp_path / "plots"
    assert report.main([str(workdir), "--json", "--plots", str(plots)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) >= {"metrics", "ratios", "phase", "trend", "diagnosis"}
    assert set(rep["metrics"]) == set(RULES)
    for entry in rep["metrics"].values():
        assert {"value", "status"} <= set(entry)
    assert "similarity" in rep["metrics"]["llm_epoch"]
    assert not any(k.startswith("train/") for k in rep["metrics"])
    assert isinstance(rep["diagnosis"], list) and isinstance(rep["trend"], dict)
    written = sorted(plots.glob("*.png"))
    assert {p.name for p in written} == {f"{name}.png" for name in RULES}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = mpl_image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_cli_text_file(tmp_path, capsys):
    path = tmp_path / "log.txt"
    path.write_text(EXAMPLE)
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "Phase: adaptation" in out and "High WavLM loss" in out


def test_cli_unreadable_inputs(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2  # a directory without metrics.jsonl
    assert "without metrics.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    assert report.main([str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("train/llm_epoch:abc\n")
    assert report.main([str(garbage)]) == 2
    assert "garbage.txt:1" in capsys.readouterr().err


def test_loss_g_cause_and_disabled_discriminator():
    config = {"loss": {"alpha_adv": 0.0, "alpha_feat": 0.0, "alpha_msspec": 15.0}}
    epoch = {
        "train/loss_g_epoch": 6.0,
        "train/msspec_epoch": 0.3,
        "train/wavlm_epoch": 0.6,
        "train/loss_d_epoch": 0.0,  # logged as 0 when the discriminator is not run
        "train/adv_g_epoch": 0.0,
    }
    records = [{"step": 0, "config": config}, {"step": 1, "epoch": 0, **epoch}]
    rep = report.build_report(report.records_to_log(records, "mem"))
    assert rep["metrics"]["loss_d_epoch"]["status"] == "disabled"
    assert rep["metrics"]["adv_g_epoch"]["status"] == "disabled"
    (diag,) = [d for d in rep["diagnosis"] if d["metric"] == "loss_g_epoch"]
    assert diag["severity"] == "critical"
    assert diag["cause"].startswith("largest weighted terms: 15*msspec=4.5, 1*wavlm=0.6")
    assert not any(d["metric"] in ("loss_d_epoch", "adv_g_epoch") for d in rep["diagnosis"])


def test_llm_metric_disabled_without_the_llm_branch():
    epoch = {"train/loss_g_epoch": 6.0, "train/msspec_epoch": 0.3, "train/wavlm_epoch": 0.6}
    for config, status in (({"heads": {"llm_dim": 0}}, "disabled"), ({}, "missing")):
        records = [{"step": 0, "config": config}, {"step": 1, "epoch": 0, **epoch}]
        rep = report.build_report(report.records_to_log(records, "mem"))
        assert rep["metrics"]["llm_epoch"]["status"] == status


def test_objective_evaluation_and_share_curves_in_the_report_and_plots(tmp_path, capsys):
    """``eval/*`` records (the periodic objective evaluation) and the gradient shares become
    curves: their latest values in the JSON report, and a plot each."""
    pytest.importorskip("matplotlib")
    records = _run_records(n_epochs=2)
    for step in range(1, 7):
        share = {"adv_g": 0.1 * step, "msspec": 1 - 0.1 * step, "wavlm": 0.6, "llm": 0.4}
        shares = {f"train/grad_share/{k}_step": v for k, v in share.items()}
        records.append({"step": step, **shares})
    for step, sdr in ((3, 1.5), (6, 2.5)):
        records.append(
            {
                "step": step,
                "eval/all/si_sdr": sdr,
                "eval/cb0/si_sdr": sdr - 3,
                "eval/all/mel_distance": 2.0 / step,
                "eval/codebook/usage_0": 0.5,
                "eval/codebook/entropy_0": 4.0,
            }
        )
    workdir = tmp_path / "run"
    workdir.mkdir()
    _write_jsonl(workdir / "metrics.jsonl", records)
    log = report.records_to_log(records, "mem")
    assert log.curves["eval/all/si_sdr"] == [(3, 1.5), (6, 2.5)]
    assert report.main([str(workdir), "--json", "--plots", str(tmp_path / "p")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["curves"]["eval/all/si_sdr"] == 2.5
    assert rep["curves"]["eval/cb0/si_sdr"] == -0.5
    assert (tmp_path / "p" / "objective_eval.png").stat().st_size > 0
    assert log.curves["train/grad_share/adv_g"][-1] == (6, pytest.approx(0.6))
    assert rep["curves"]["train/grad_share/llm"] == 0.4
    assert (tmp_path / "p" / "grad_share.png").stat().st_size > 0
    assert report.main([str(workdir)]) == 0
    text = capsys.readouterr().out
    assert "Objective evaluation (latest)" in text and "eval/all/si_sdr" in text
    assert "grad_share" not in text.split("Objective evaluation")[1]
