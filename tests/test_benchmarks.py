"""The benchmark scripts run end to end on the demo config and keep their JSON contracts.

Each runs as its own process (as a user runs it) on the tiny demo codec, so these check the
plumbing, not speed: the figures themselves live in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _process(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(args: list[str], timeout: int = 600) -> str:
    proc = _process(args, timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_throughput_json_contract(tmp_path):
    out = tmp_path / "tp.json"
    stdout = _run(
        [
            "benchmarks/throughput.py",
            "--config=configs/demo.py",
            "--batch=2",
            "--seconds=0.5",
            "--steps=1",
            "--warmup=0",
            f"--json={out}",
        ]
    )
    res = json.loads(out.read_text())
    assert {"jax", "torch", "ratio"} <= set(res)
    for side in ("jax", "torch"):
        r = res[side]
        for key in ("audio_s_per_s", "step_ms", "compile_s", "peak_mem_mb", "flops_per_step"):
            assert key in r, (side, key)
        assert r["audio_s_per_s"] == pytest.approx(2 * 0.5 / (r["step_ms"] / 1e3))
        assert r["flops_per_step"] > 0 and r["peak_mem_mb"] > 0
        assert "mfu" in r  # null on CPU
    assert res["ratio"] == pytest.approx(
        res["jax"]["audio_s_per_s"] / res["torch"]["audio_s_per_s"]
    )
    # The per-backend formulations in use are recorded with the figures.
    assert res["jax"]["disc_conv"] == "s2d" and res["jax"]["transpose_method"] == "polyphase"
    assert "ratio (JAX / PyTorch audio-s/s)" in stdout
    # Same weights and batch on both sides: the first step's losses agree.
    for k in ("loss_g", "loss_d", "msspec"):
        # A smoke-level check; tests/test_torch_step.py holds all seven losses to 1e-4.
        assert res["jax"]["losses"][k] == pytest.approx(res["torch"]["losses"][k], rel=1e-3), k


def test_formulations_table_and_json(tmp_path):
    out = tmp_path / "form.json"
    stdout = _run(
        [
            "benchmarks/formulations.py",
            "--config=configs/demo.py",
            "--batch=1",
            "--seconds=0.5",
            "--reps=1",
            f"--json={out}",
        ]
    )
    res = json.loads(out.read_text())
    expected = {
        "decoder": ("dilated", "polyphase"),
        "disc": ("lax", "s2d", "s2d_full"),
        "stft": ("fft", "matmul"),
        "encoder": ("frozen", "trainable"),
    }
    for section, variants in expected.items():
        for v in variants:
            assert res[section][v]["fwd_ms"] > 0 and res[section][v]["fwd_bwd_ms"] > 0
            assert f"{section:10s} {v:16s}" in stdout
    assert res["vq"]["segment_sum"]["fwd_ms"] > 0
    # The one-hot matmul (HIGHEST precision) gives the scatter-add's statistics.
    assert res["vq"]["one_hot_matmul"]["max_abs_diff"] < 1e-4
    assert res["_meta"]["backend"] == "cpu"


def test_formulations_rejects_unknown_section():
    proc = _process(["benchmarks/formulations.py", "--config=configs/demo.py", "--only=fft"], 300)
    assert proc.returncode != 0
    assert "unknown sections ['fft']" in proc.stderr


def test_compile_check_prints_memory_and_flops(tmp_path):
    out = tmp_path / "check.json"
    stdout = _run(
        ["benchmarks/compile_check.py", "--config=configs/demo.py", "--mesh=data:2", "--batch=2",
         "--parts", "--buffers=3", f"--json={out}"]
    )  # fmt: skip
    assert "mesh {'data': 2} (2 CPU devices), global batch 2" in stdout
    assert "largest values of the compiled step" in stdout
    for name in ("argument", "output", "temp", "peak estimate"):
        assert f"  {name}" in stdout, name
    assert "GFLOP per device (XLA cost analysis)" in stdout
    # --parts: each part of the step compiled alone, one row each (the demo has 3 scales)
    assert "parts compiled alone" in stdout
    parts = json.loads(out.read_text())["parts"]
    assert [p["part"] for p in parts] == [
        "generator forward", "generator fwd+bwd (mel loss)", "mel loss fwd+bwd",
        "discriminator scale n_fft=512 fwd+bwd", "discriminator scale n_fft=256 fwd+bwd",
        "discriminator scale n_fft=128 fwd+bwd",
        "discriminator n_fft=512 grad to params, 0 convs + post",
        "discriminator n_fft=512 grad to params, 1 convs + post",
        "discriminator n_fft=512 grad to params, 2 convs + post",
        "discriminator n_fft=512 grad to params, 3 convs + post",
        "discriminator n_fft=512 grad to params, 4 convs + post",
        "discriminator n_fft=512 forward",
        "discriminator n_fft=512 grad to audio",
        "discriminator n_fft=512 grad to params, 5 convs + post",
    ]  # fmt: skip
    for p in parts:
        assert p["compile_s"] > 0 and p["flops"] > 0 and p["part"] in stdout, p
    buffers = json.loads(out.read_text())["largest_buffers"]
    assert len(buffers) == 3 and all(b["padded_mib"] >= b["logical_mib"] > 0 for b in buffers)


def test_largest_buffers_pads_tpu_tiles():
    """A TPU tile T(8,128) stores the most-minor dimension in 128 lanes and the next in 8
    sublanes; values of one shape and layout (in-place updates) are counted together."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compile_check import largest_buffers

    hlo = """HloModule m
%fused (p: f32[4]) -> f32[4] {
  %inner = f32[999,999]{1,0} parameter(0)
}
ENTRY %main (p: bf16[184,8,34,8,9]) -> bf16[184,8,34,8,9] {
  %fusion.1 = bf16[184,8,34,8,9]{3,1,2,0,4:T(8,128)(2,1)} fusion(%p), kind=kLoop
  %fusion.2 = bf16[184,8,34,8,9]{3,1,2,0,4:T(8,128)(2,1)} fusion(%fusion.1), kind=kLoop
  %copy.3 = f32[3,300]{1,0:T(8,128)} copy(%q)
  %copy.4 = f32[1000]{0} copy(%r)
}
"""
    rows = largest_buffers(hlo, 5)
    assert [r["name"] for r in rows] == ["fusion.1", "copy.3", "copy.4"]  # not the inner one
    big, small, flat = rows
    assert big["values"] == 2 and big["layout"] == "{3,1,2,0,4} T(8,128)"
    assert big["logical_mib"] * 2**20 == 184 * 8 * 34 * 8 * 9 * 2
    assert big["padded_mib"] * 2**20 == 184 * 8 * 34 * 128 * 9 * 2  # dim 3: 8 -> 128 lanes
    assert small["padded_mib"] * 2**20 == 8 * 384 * 4  # 3 -> 8 sublanes, 300 -> 384 lanes
    assert flat["padded_mib"] == flat["logical_mib"]


def test_align_demo_prints_the_boundary_errors():
    out = _process(["benchmarks/align_demo.py", "--json"], timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["clips_aligned"] == result["words_matched"] == 48
    assert result["boundaries"] == 384 and result["median_ms"] <= 40
    assert set(result) >= {"p95_ms", "within_80ms", "wall_s"}


def test_gpu_suite_cpu_smoke(tmp_path):
    """The one-command GPU measurement, run on CPU at demo size: every run succeeds and lands
    in one JSON and one markdown table."""
    out = _process(["benchmarks/gpu_suite.py", "--cpu-smoke", f"--out={tmp_path}"], timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["smoke"] and report["versions"]["jax_backend"] == "cpu"
    kinds = [r["kind"] for r in report["runs"]]
    assert kinds == ["throughput", "throughput", "formulations"]
    for row in report["runs"]:
        assert row["returncode"] == 0, row.get("error")
    for row in report["runs"][:2]:
        assert row["jax_audio_s_per_s"] > 0 and row["torch_audio_s_per_s"] > 0
    assert [r["jax_precision"] for r in report["runs"][:2]] == ["fp32", "bf16"]
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| throughput b2 jax-bf16 torch-fp32 |" in table and "CPU smoke run" in table


LIBTPU = ROOT / ".venv" / "libtpu"  # installed there by scripts/test.sh


def test_compile_check_compiles_the_demo_step_for_tpu_chips(tmp_path):
    """The TPU compiler, ahead of time on this CPU: the demo step for a v5e 2x2 slice."""
    if not (LIBTPU / "libtpu").is_dir():
        pytest.skip(f"libtpu is not installed in {LIBTPU} (scripts/test.sh installs it there)")
    out = tmp_path / "tpu.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(LIBTPU)])
    proc = subprocess.run(
        [sys.executable, "benchmarks/compile_check.py", "--config=configs/demo.py",
         "--topology=v5e:2x2", "--precision=bf16", "--batch=4", "--seconds=0.5",
         f"--json={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "mesh {'data': 4} (4 v5e:2x2 TPU chips), global batch 4" in proc.stdout
    res = json.loads(out.read_text())
    assert res["topology"] == "v5e:2x2" and res["chips"] == 4 and res["global_batch"] == 4
    assert res["transpose_method"] == "dilated" and res["disc_conv"] == "s2d_full"  # TPU "auto"
    assert res["hbm_capacity_gib"] == 16 and res["fits"] is True
    assert 0 < res["hbm_peak_gib"] < 16 and res["flops_per_chip"] > 0 and res["compile_s"] > 0
    # compiled without sliced prefetches, whose joins XLA's TPU cost model misprices: a valid,
    # positive step time
    assert res["sliced_prefetch"] is False and res["cost_model_unpriced_calls"] == 0
    step, raw = res["cost_model_step_s"], res["cost_model_raw_optimal_seconds"]
    assert step > 0 and step == raw
    assert res["audio_s_per_s_per_chip"] > 0 and 0 < res["mfu"] < 1


# ------------------------------------------------------------------------------- recipe quality
def _recipe_quality():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import recipe_quality

    return recipe_quality


_FAKE_RUN = """
import json, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1]) / "metrics.jsonl"
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
step = 0
t = time.process_time()
while not stop:
    while time.process_time() - t < 0.05:  # burn CPU
        pass
    t = time.process_time()
    step += 1
    rec = {"step": step, "train/msspec_step": 1.0 / step}
    if step % 2 == 0:
        rec.update({"eval/all/mel_distance": 2.0 / step, "eval/codebook/usage_0": 0.5,
                    "eval/codebook/usage_1": 1.0})
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\\n")
with out.open("a") as f:
    f.write(json.dumps({"step": step, "eval/all/mel_distance": 0.0}) + "\\n")
sys.exit(75)
"""


def test_recipe_quality_stops_a_run_at_its_cpu_budget(tmp_path):
    """The budget is the process's CPU seconds: the run gets SIGTERM once it has used them,
    its records (written until it exits) come back stamped with the CPU seconds seen."""
    rq = _recipe_quality()
    run = rq.run_variant([sys.executable, "-c", _FAKE_RUN, str(tmp_path)], tmp_path, 1.0,
                         poll_s=0.1)  # fmt: skip
    assert run["stopped_by_budget"] and run["returncode"] == 75
    assert 1.0 <= run["cpu_s"] < 3.0 and run["wall_s"] >= run["cpu_s"] * 0.5
    records = run["records"]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and len(records) >= 10
    assert records[-1]["eval/all/mel_distance"] == 0.0  # written after the SIGTERM
    cpu = [r["cpu_s"] for r in records]
    assert cpu == sorted(cpu) and cpu[-1] <= run["cpu_s"]
    usage = rq.curve(records, "eval/codebook/usage")
    assert usage and all(v == 0.75 for *_, v in usage)  # the mean over codebooks


def test_recipe_quality_summary_and_verdicts():
    rq = _recipe_quality()

    def run(mel):  # evaluations at steps 10, 20, ...
        recs = [{"step": 10 * (i + 1), "cpu_s": 6.0 * (i + 1), "wall_s": 0.0,
                 "eval/all/mel_distance": m, "eval/all/si_sdr": m}
                for i, m in enumerate(mel)]  # fmt: skip
        return {"records": recs, "cpu_s": 60.0, "wall_s": 61.0, "returncode": 75,
                "stopped_by_budget": True}  # fmt: skip

    runs = {"original": run([3.0, 2.0, 1.0, 1.1, 0.9]), "ema": run([3.0, 2.0, 0.5, 0.5, 0.5]),
            "balancer": run([3.0, 2.0, 1.0, 1.05, 0.95])}  # fmt: skip
    s = {n: rq.summarise(r) for n, r in runs.items()}
    mel = s["original"]["metrics"]["eval/all/mel_distance"]
    assert mel["final"] == pytest.approx(1.0) and mel["best"] == 0.9
    assert mel["spread"] == pytest.approx((0.02 / 3) ** 0.5)
    assert s["original"]["steps"] == 50 and s["original"]["cpu_s_per_step"] == 1.2
    judged = rq.verdicts(s)
    assert judged["ema"]["eval/all/mel_distance"]["verdict"] == "better"
    assert judged["ema"]["eval/all/si_sdr"]["verdict"] == "worse"  # higher is better there
    assert judged["balancer"]["eval/all/mel_distance"]["verdict"] == "within noise"
    table = rq.markdown(s, judged)
    assert "| ema | 50 | 1.2 | 0.500 ± 0.000 (+) | 0.500 ± 0.000 (-) |" in table


def test_recipe_quality_runs_the_demo_variants(tmp_path):
    """End to end on the demo: a variant with every tool on, two evaluations, the results
    files and the plot (the real comparison runs for minutes per variant: RESULTS.md)."""
    out = tmp_path / "rq"
    args = ["benchmarks/recipe_quality.py", f"--out={out}", "--variants=all", "--max_steps=2",
            "--eval_every=1", "--eval_clips=2", "--budget_s=900"]  # fmt: skip
    _run(args, timeout=900)
    res = json.loads((out / "results.json").read_text())
    v = res["variants"]["all"]
    assert v["tools"] == "all" and v["steps"] == 2 and v["evaluations"] == 2
    assert not v["stopped_by_budget"] and v["returncode"] == 0
    for metric in ("eval/all/mel_distance", "eval/all/si_sdr", "eval/codebook/usage"):
        assert np.isfinite(v["metrics"][metric]["final"]), metric
    assert (out / "recipe_quality.png").stat().st_size > 0
    assert "| all | 2 |" in (out / "results.md").read_text()
    # A finished variant is not run again.
    stdout = _run(args, timeout=300)
    assert "running all" not in stdout
