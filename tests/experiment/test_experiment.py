"""`python -m wmtp_hf.experiment`: every stage on one model, measured the same way, reused on a re-run,
MLflow parent + nested runs, and one-line errors that write nothing."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import write_llama, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from wmtp_hf.data import load_source, tokenize_dataset
from wmtp_hf.experiment.__main__ import main
from wmtp_hf.experiment.measure import draw_rows
from wmtp_hf.stats import crossed_bootstrap, verdict

mlflow = pytest.importorskip("mlflow")

RUNS = ["baseline", "critic", "verifiable", "baseline_matched", "rho1"]


def write_config(path: Path, model: Path, llama: Path, **stage_changes) -> Path:
    stages = {
        "baseline": {},
        "critic": {"eval_strategy": "no"},
        "verifiable": {},
        "rho1": {"reference_model": str(llama)},
    }
    for stage, changes in stage_changes.items():
        stages[stage] = {**stages[stage], **changes}
    config = {
        "model": str(model),
        "shared": {"dataset": "offline", "report_to": "mlflow", "per_device_train_batch_size": 4, "max_length": 384,
                   "logging_steps": 1, "learning_rate": 1e-2, "warmup_steps": 0},
        "stages": stages,
        "evaluation": {"max_rows": 10, "n_problems": 3, "max_new_tokens": 8, "batch_size": 4, "timeout": 5,
                       "inspect_examples": 1},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def heldout_rows(tokenizer, max_rows: int):
    """The held-out rows the experiment measures: `draw_rows` (tested on its own below) of max_rows."""
    rows, _ = tokenize_dataset(load_source("offline", split="eval"), tokenizer, max_length=384)
    return rows.select(draw_rows([bool(c) for c in rows["is_correct"]], max_rows, seed=0))


def naive_heldout_ce(model_dir: Path, max_rows: int, per_row: list | None = None) -> list[float]:
    """Per-head CE on the drawn `max_rows` held-out rows' correct ones, one row and one target at a time
    (`per_row` receives each row's head-0 mean CE)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    n = model.config.n_future_tokens
    sums, counts = [0.0] * n, [0] * n
    for row in heldout_rows(tokenizer, max_rows):
        if not row["is_correct"]:
            continue
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids, return_all_heads=True).mtp_logits[0]  # [T, n, V]
        before = (sums[0], counts[0])
        for t in range(ids.shape[1]):
            for k in range(n):
                j = t + 1 + k
                if row["prompt_length"] <= j < ids.shape[1]:
                    sums[k] -= torch.log_softmax(logits[t, k].double(), -1)[ids[0, j]].item()
                    counts[k] += 1
        if per_row is not None:
            per_row.append(
                (row["task_id"], (sums[0] - before[0]) / (counts[0] - before[1]), counts[0] - before[1])
            )
    return [s / c for s, c in zip(sums, counts, strict=True)]


def naive_auroc(model_dir: Path, max_rows: int) -> float:
    """Brute-force pair count over each held-out response's last value (`V` before its last token)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores = {True: [], False: []}
    for row in heldout_rows(tokenizer, max_rows):
        with torch.no_grad():
            value = model(input_ids=torch.tensor([row["input_ids"]]), value_only=True).value[0]
        scores[bool(row["is_correct"])].append(value[len(row["input_ids"]) - 2].item())
    pairs = [(p > q) + 0.5 * (p == q) for p in scores[True] for q in scores[False]]
    return sum(pairs) / len(pairs)


def mtimes(out: Path) -> dict[str, float]:
    return {name: (out / name / "final" / "model.safetensors").stat().st_mtime_ns for name in RUNS}


def test_experiment_trains_measures_reports_and_reuses(tmp_path, tiny_tokenizer, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO, logger="wmtp_hf")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "wmtp-experiment-test")
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    llama = write_llama(tmp_path / "llama", tiny_tokenizer)
    config = write_config(tmp_path / "experiment.yaml", model, llama)
    out = tmp_path / "exp"
    args = ["--config", str(config), "--output-dir", str(out), "--max-steps", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for i, name in enumerate(RUNS, start=1):
        assert f"[{i}/5] {name}: training 2 steps" in printed

    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == RUNS  # rho1 has a reference_model, so no reference stage
    assert report["runs"]["critic"]["start_model"] == str(out / "baseline" / "final")
    assert report["runs"]["verifiable"]["start_model"] == str(out / "critic" / "final")
    assert report["runs"]["baseline_matched"]["start_model"] == str(out / "baseline" / "final")
    for name in RUNS:
        run = report["runs"][name]
        assert run["steps"] == 2
        assert set(run["heldout"]["pass_at_k"]) == {"pass@1"} and run["heldout"]["n_problems"] == 3
        summary = json.loads((out / "evaluation" / name / "pass_at_k" / "summary.json").read_text())
        assert 1.0 <= run["heldout"]["tokens_per_forward"] <= 2.0  # self-speculative, n_future = 2
        assert run["heldout"]["tokens_per_forward"] == summary["speculative"]["tokens_per_forward"]
        # Held-out problems are disjoint from the trained ones (the offline split by problem id).
        assert summary["n_trained_problems_evaluated"] == 0 and summary["trained_problems_record"].endswith(
            f"{name}/final/trained_problems.json"
        )
    trained = {
        name: json.loads((out / name / "final" / "trained_problems.json").read_text()) for name in RUNS
    }
    assert [r["stage"] for r in trained["verifiable"]["runs"]] == ["baseline", "critic", "verifiable"]
    assert set(trained["baseline"]["problem_ids"]) <= set(trained["verifiable"]["problem_ids"])
    # Every model is measured the same way; the numbers equal a one-row-at-a-time computation.
    assert report["runs"]["baseline"]["heldout"]["ce_per_head"] == pytest.approx(
        naive_heldout_ce(out / "baseline" / "final", 10), rel=1e-4
    )
    assert report["runs"]["critic"]["heldout"]["auroc"] == pytest.approx(
        naive_auroc(out / "critic" / "final", 10)
    )
    assert report["runs"]["baseline"]["heldout"]["auroc"] is None  # no value head
    assert report["comparisons"]["verifiable"]["against"] == "baseline_matched"
    assert report["comparisons"]["rho1"]["against"] == "baseline"
    rho1 = report["comparisons"]["rho1"]["ce_head_0"]
    assert rho1["difference"] == pytest.approx(
        report["runs"]["rho1"]["heldout"]["ce_per_head"][0]
        - report["runs"]["baseline"]["heldout"]["ce_per_head"][0]
    )
    # The interval is the paired bootstrap over the held-out rows' own CE, computed one row at a time.
    rows_w, rows_b = [], []
    naive_heldout_ce(out / "rho1" / "final", 10, rows_w)
    naive_heldout_ce(out / "baseline" / "final", 10, rows_b)
    assert [r[0] for r in rows_w] == [r[0] for r in rows_b]
    expected = crossed_bootstrap(
        [w[1] - b[1] for w, b in zip(rows_w, rows_b, strict=True)], [b[2] for b in rows_b]
    )
    assert rho1["ci95"] == pytest.approx([expected["low"], expected["high"]], rel=1e-4)
    assert rho1["verdict"] == verdict(expected["low"], expected["high"], lower_is_better=True)
    assert report["summary"]["critic"]["auroc"]["ci95"][0] <= report["summary"]["critic"]["auroc"]["estimate"]

    # The start row: the model before any step, measured like every final model; each run against it.
    start = report["summary"]["start"]
    assert list(report["summary"])[0] == "start" and start["steps"] == 0 and start["stage"] == "start"
    assert report["start"]["model"] == str(model) and report["start"]["start_of"] == "baseline"
    assert [c["estimate"] for c in start["ce_per_head"]] == pytest.approx(
        naive_heldout_ce(model, 10), rel=1e-4
    )
    assert start["auroc_unavailable"] == "no value head" and "auroc" not in start
    assert set(start["pass_at_k"]) == {"pass@1"} and 1.0 <= start["tokens_per_forward"] <= 2.0
    assert set(report["from_start"]) == set(RUNS)
    from_start = report["from_start"]["baseline"]["ce_head_0"]
    rows_s = []
    naive_heldout_ce(model, 10, rows_s)
    expected = crossed_bootstrap(
        [b[1] - s[1] for b, s in zip(rows_b, rows_s, strict=True)], [s[2] for s in rows_s]
    )
    assert from_start["difference"] == pytest.approx(
        report["summary"]["baseline"]["ce_per_head"][0]["estimate"] - start["ce_per_head"][0]["estimate"]
    )
    assert from_start["ci95"] == pytest.approx([expected["low"], expected["high"]], rel=1e-4)
    assert "pass@1" in report["from_start"]["rho1"]
    markdown = (out / "report.md").read_text()
    assert "| start | start | 0 | – |" in markdown and "| no value head |" in markdown
    assert "## Against the start model" in markdown and "**baseline** vs **start**" in markdown

    # Runs keep only final/: no checkpoint (with optimizer state) unless keep_checkpoints; sizes are logged.
    for name in RUNS:
        assert not list((out / name).glob("checkpoint-*")) and not list((out / name).rglob("optimizer.pt"))
    sizes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saved final model")]
    assert len(sizes) == len(RUNS)
    for name, line in zip(RUNS, sizes, strict=True):
        n = int(re.search(r"\((\d+) bytes\)", line).group(1))
        assert f"{out / name / 'final'}:" in line and n == sum(
            p.stat().st_size for p in (out / name / "final").rglob("*") if p.is_file()
        )
    markdown = (out / "report.md").read_text()
    assert "| rho1 | rho1 | 2 |" in markdown and "What the verdicts mean" in markdown
    for path in report["plots"].values():
        assert Path(path).stat().st_size > 5000 and f"]({Path(path).name})" in markdown
    assert {"training loss", "per-head held-out CE", "token weight histograms"} <= set(report["plots"])
    assert any(
        title.startswith("token weights of one held-out example (verifiable") for title in report["plots"]
    )
    for run in ("verifiable", "rho1"):  # the inspect page of each weighted run
        tokens = json.loads((out / "inspect" / run / "tokens.json").read_text())
        assert len(tokens["examples"]) == 1 and (out / "inspect" / run / "tokens.html").is_file()

    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("wmtp-experiment-test")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == set(RUNS)
    assert nested["rho1"].data.tags["wmtp.stage"] == "rho1" and "kept_fraction" in nested["rho1"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "report.md",
        "report.json",
        "training_loss.png",
        "heldout_ce.png",
        "weight_histograms.png",
    } <= artifacts
    assert parent.data.metrics["baseline.heldout_ce_head_0"] == pytest.approx(
        report["runs"]["baseline"]["heldout"]["ce_per_head"][0]
    )
    assert [
        parent.data.metrics[f"rho1_vs_baseline.ce_head_0.difference.ci95_{end}"] for end in ("low", "high")
    ] == pytest.approx(rho1["ci95"])

    # Unchanged config: every run is reused (nothing retrained, same report numbers).
    before = mtimes(out)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: reused (config unchanged)" in printed for name in RUNS), printed
    assert mtimes(out) == before
    again = json.loads((out / "report.json").read_text())
    assert all(again["runs"][name]["reused"] for name in RUNS)
    assert again["runs"]["rho1"]["heldout"] == report["runs"]["rho1"]["heldout"]

    # A changed verifiable config retrains it and every run after it; earlier runs are reused.
    write_config(config, model, llama, verifiable={"beta": 0.5})
    assert main(args) == 0
    printed = capsys.readouterr().out
    after = mtimes(out)
    for name in ("baseline", "critic"):
        assert f"{name}: reused" in printed and after[name] == before[name]
    for name in ("verifiable", "baseline_matched", "rho1"):
        assert f"{name}: training 2 steps" in printed and after[name] != before[name]


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        ({"stages": {"baseline": {}, "dpo": {}}}, [], "stages: unknown stage 'dpo'; available: reference, baseline"),
        ({"stages": {"critic": {}}}, [], "stages.critic starts from the baseline stage's output: add stages.baseline"),
        ({"stages": {"verifiable": {"model_name_or_path": "/nonexistent/critic"}}}, [],
         "stages.verifiable.model_name_or_path '/nonexistent/critic': no such folder, and not a Hub id"),
        ({"stages": {"baseline": {"k_percent": 0.5}}}, [], "unknown key 'k_percent' for stage 'baseline'"),
        ({"stage": {"baseline": {}}}, [], "unknown key 'stage'; expected model, matched_baseline, shared"),
        ({"stages": {"baseline": {}}}, ["--max-steps", "-3"], "--max-steps: expected a positive number"),
        ({"stages": {"baseline": {"output_dir": "x"}}}, [], "'output_dir' is set by the experiment"),
        ({"stages": {"baseline": {}}, "seeds": [0, 0]}, [], "seeds: expected a list of distinct non-negative"),
        ({"stages": {"baseline": {}}}, ["--seeds", "a,b"], "--seeds: expected comma-separated integers"),
        ({"stages": {"baseline": {"seed": 3}}, "seeds": [0, 1]}, [], "'seed' is set by the experiment's seeds"),
        ({"stages": {"baseline": {}}, "control": {"noise_fraction": 1.5}}, [],
         "control.noise_fraction: expected a number in (0, 1)"),
    ],
)  # fmt: skip
def test_bad_experiment_config_is_one_line_and_writes_nothing(tmp_path, capsys, config, extra, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["--config", str(path), "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_existing_folder_that_is_not_an_experiment_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"stages": {"baseline": {}}}))
    assert main(["--config", str(path), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty and holds no experiment.json" in err[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_builtin_default_equals_the_yaml_file_and_adds_the_reference_stage():
    from wmtp_hf.experiment.plan import build_plan, default_config_dict, read_experiment_file

    repo = Path(__file__).resolve().parents[2]
    data, source = read_experiment_file(str(repo / "configs" / "experiment.yaml"))
    builtin = default_config_dict()
    assert {k: v for k, v in data.items() if k != "evaluation"} == {
        k: v for k, v in builtin.items() if k != "evaluation"
    }
    plan = build_plan(data, source, "runs/experiment")
    default_plan = build_plan(builtin, "built-in", "runs/experiment")
    assert [r.fingerprint for r in plan.stages] == [r.fingerprint for r in default_plan.stages]
    assert plan.evaluation == default_plan.evaluation
    assert [r.name for r in plan.stages] == [
        "reference",
        "baseline",
        "critic",
        "verifiable",
        "baseline_matched",
        "rho1",
    ]
    assert plan.run("rho1").config.reference_model == str(Path("runs/experiment/reference/final"))
    assert plan.run("baseline").config.model_name_or_path is None


def test_rho1_positive_control_is_better_than_baseline(tmp_path, tiny_tokenizer, capsys):
    """The shortened rho1 control (fixed seed): baseline and rho1 train on rows with half their response
    tokens random, the reference on the clean rows; rho1's clean held-out CE is `better` (interval below 0)."""
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    llama = write_llama(tmp_path / "llama", tiny_tokenizer)
    config = {
        "model": str(model),
        "matched_baseline": False,
        "seeds": [0],
        "control": {"noise_fraction": 0.5},
        "control_report": None,
        "shared": {"dataset": "offline", "report_to": "none", "per_device_train_batch_size": 4, "max_length": 384,
                   "logging_steps": 5, "save_strategy": "no", "learning_rate": 1e-2, "warmup_steps": 0,
                   "max_steps": 40},
        "stages": {"reference": {"model_name_or_path": str(llama)}, "baseline": {}, "rho1": {}},
        "evaluation": {"batch_size": 8, "inspect_examples": 0},
    }  # fmt: skip
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "control"
    assert main(["--config", str(path), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ce = report["comparisons"]["rho1"]["ce_head_0"]
    print(f"rho1 control: difference {ce['difference']:+.4f}, ci95 {ce['ci95']}")
    assert report["runs"]["rho1"]["dataset"].startswith(str(out / "data" / "noisy-"))
    assert report["runs"]["reference"]["dataset"] == "offline"
    assert ce["verdict"] == "better" and ce["ci95"][1] < 0, ce
    assert report["comparisons"]["rho1"]["expected"] == "better"
    assert "This report *is* the positive control" in (out / "report.md").read_text()


def test_seeds_give_one_chain_of_runs_per_seed():
    from wmtp_hf.experiment.plan import build_plan, default_config_dict

    plan = build_plan(default_config_dict(), "built-in", "out", seeds=[0, 2])
    assert plan.seeds == [0, 2] and len(plan.stages) == 12
    for run in plan.stages:
        assert run.key == f"seed_{run.seed}/{run.name}" and run.output_dir == Path("out") / run.key
    critic = plan.runs_named("critic")[1]
    assert critic.seed == 2 and critic.config.model_name_or_path == str(Path("out/seed_2/baseline/final"))
    assert plan.runs_named("rho1")[1].config.reference_model == str(Path("out/seed_2/reference/final"))
    one = build_plan(default_config_dict(), "built-in", "out")  # one seed: the folders of before
    assert [r.key for r in one.stages][:2] == ["reference", "baseline"]
    assert one.run("baseline").config.seed == plan.runs_named("baseline")[0].config.seed == 0


@pytest.mark.parametrize("n_correct", [0, 1, 3, 17, 29, 40])
def test_drawn_rows_keep_the_class_mix_and_depend_only_on_the_seed(n_correct):
    import random

    labels = [True] * n_correct + [False] * (40 - n_correct)
    random.Random(n_correct).shuffle(labels)
    for max_rows in (1, 2, 5, 10, 39, 40, 100):
        rows = draw_rows(labels, max_rows, seed=0)
        assert (
            rows == sorted(set(rows))
            and len(rows) == min(max_rows, 40)
            and rows == draw_rows(labels, max_rows, 0)
        )
        drawn = sum(labels[i] for i in rows)
        assert abs(drawn - len(rows) * n_correct / 40) < 1 + 1e-9  # the full set's mix within one row
        if 0 < n_correct < 40 and max_rows >= 2:
            assert 0 < drawn < len(rows)  # both classes, so an AUROC can be computed
    assert draw_rows(labels, None, 0) == list(range(40))
    if 0 < n_correct < 40:  # another seed draws other rows
        assert any(draw_rows(labels, 10, s) != draw_rows(labels, 10, 0) for s in range(1, 5))


def test_auroc_that_cannot_be_computed_says_why():
    from types import SimpleNamespace

    from wmtp_hf.experiment.measure import auroc_unavailable
    from wmtp_hf.experiment.report import render_markdown, summarize_run

    critic = SimpleNamespace(config=SimpleNamespace(model_type="wmtp"), value_head=object())
    plain = SimpleNamespace(config=SimpleNamespace(model_type="wmtp"), value_head=None)
    assert auroc_unavailable(critic, [True, False]) is None
    assert auroc_unavailable(critic, [True] * 3) == "one class only: all 3 held-out rows are correct"
    assert auroc_unavailable(critic, [False]) == "one class only: all 1 held-out rows are incorrect"
    assert auroc_unavailable(plain, [True, False]) == "no value head"
    assert (
        auroc_unavailable(SimpleNamespace(config=SimpleNamespace(model_type="llama")), [True])
        == "no value head"
    )
    one_class = {
        "ce_per_head": [1.0],
        "auroc": None,
        "auroc_unavailable": "one class only: all 3 held-out rows are correct",
    }
    summary = summarize_run([one_class])
    assert "auroc" not in summary and summary["auroc_unavailable"] == one_class["auroc_unavailable"]
    summary.update(stage="critic", reused=False, steps=2, final_train_loss=1.0)
    report = {"summary": {"critic": summary}, "comparisons": {}, "config": "c", "dataset": "offline",
              "output_dir": "o", "verdicts_mean": "", "plots": {}, "controls": None}  # fmt: skip
    assert "| one class only: all 3 held-out rows are correct |" in render_markdown(report)


def test_runs_keep_checkpoints_only_when_asked(tmp_path, capsys):
    from wmtp_hf.experiment.plan import build_plan

    data = {"stages": {"baseline": {}, "critic": {"save_strategy": "steps"}}}
    plan = build_plan(data, "x.yaml", "out")
    assert [str(r.config.save_strategy) for r in plan.stages] == ["SaveStrategy.NO", "SaveStrategy.STEPS"]
    kept = build_plan({**data, "keep_checkpoints": True}, "x.yaml", "out")
    assert all(str(r.config.save_strategy) == "SaveStrategy.STEPS" for r in kept.stages)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**data, "keep_checkpoints": "yes"}))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "o")]) == 2
    assert "key 'keep_checkpoints' expects true or false, got 'yes'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_control_measures_every_run_on_the_same_clean_rows(tmp_path, tiny_tokenizer):
    """In a positive control the planted runs (critic, verifiable, baseline_matched) draw `max_rows` from
    another correct/incorrect mix (1 planted copy per correct row: 6 of 12 drawn rows correct, 4 of the clean); their CE must still be on the clean rows the start model and baseline
    are measured on (else their difference to the start compares other rows), and the critic's AUROC on
    the planted rows."""
    model = write_tiny_model(tmp_path / "model", tiny_tokenizer)
    llama = write_llama(tmp_path / "llama", tiny_tokenizer)
    config = {
        "model": str(model),
        "seeds": [0],
        "control": {"noise_fraction": 0.5, "planted_per_correct": 1},
        "control_report": None,
        "shared": {"dataset": "offline", "report_to": "none", "per_device_train_batch_size": 4, "max_length": 384,
                   "save_strategy": "no", "learning_rate": 1e-2, "warmup_steps": 0, "max_steps": 2},
        "stages": {"baseline": {}, "critic": {"eval_strategy": "no"}, "verifiable": {},
                   "rho1": {"reference_model": str(llama)}},
        "evaluation": {"batch_size": 8, "inspect_examples": 0, "max_rows": 12, "n_problems": 1,
                       "max_new_tokens": 4, "speculative": False},
    }  # fmt: skip
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "control"
    assert main(["--config", str(path), "--output-dir", str(out)]) == 0

    def measured(run: str) -> dict:
        return json.loads((out / "evaluation" / run / "measurements.json").read_text())["metrics"]

    start_rows = measured("start")["ce_rows"]["task_id"]
    for run in RUNS:
        assert measured(run)["ce_rows"]["task_id"] == start_rows, run
    critic = measured("critic")["critic_rows"]
    assert len(critic["task_id"]) == 12 and sum(critic["is_correct"]) == 6  # the planted mix: 1 in 2
    assert len(start_rows) == 4  # the clean mix: 9 of the 27 rows that fit are correct
    assert any("_planted_" in t for t in critic["task_id"]), "the critic's AUROC rows are the planted rows"
    report = json.loads((out / "report.json").read_text())
    for run in RUNS:
        entry = report["from_start"][run]["ce_head_0"]
        assert "unpaired" not in report["from_start"][run]
        assert entry["ci95"][0] - 1e-9 <= entry["difference"] <= entry["ci95"][1] + 1e-9, (run, entry)


def test_runs_measured_on_different_rows_get_no_paired_interval():
    from wmtp_hf.experiment.report import compare

    def run(ids: list[str], ce: float) -> dict:
        rows = {"task_id": ids, "sum": [[ce * 10]] * len(ids), "count": [[10]] * len(ids)}
        return {"ce_per_head": [ce], "ce_rows": rows}

    same = compare([run(["a", "b", "c"], 1.0)], [run(["a", "b", "c"], 2.0)])
    assert same["ce_head_0"]["ci95"] == [-1.0, -1.0] and "unpaired" not in same
    other = compare([run(["a", "b", "d"], 1.0)], [run(["a", "b", "c"], 2.0)])
    assert other["ce_head_0"]["ci95"] is None and other["ce_head_0"]["verdict"] == "inconclusive"
    assert "different held-out rows" in other["unpaired"]
