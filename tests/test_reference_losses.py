"""Reference models for Rho-1: fingerprints, tokenizer checks, cached `ref_token_losses` (CLI and precompute)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hub_fixtures import use_hub_cache, write_hub_snapshot
from train_fixtures import write_llama, write_tiny_model

from wmtp_hf import loading
from wmtp_hf.data import DataError, WmtpDataCollator
from wmtp_hf.data.__main__ import main
from wmtp_hf.data.prepare import prepare
from wmtp_hf.losses import reference_token_losses
from wmtp_hf.reference import (
    REFERENCE_COLUMN,
    add_reference_losses,
    check_cached_fingerprint,
    check_same_tokenizer,
    compute_reference_column,
    dataset_fingerprint,
    load_reference_model,
    model_fingerprint,
    precompute_reference_losses,
    read_reference_cache,
    reference_fingerprint,
    tokenizer_fingerprint,
)
from wmtp_hf.tokenizer import train_code_tokenizer


def write_mbpp(path: Path, task_ids: list[int]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in task_ids:
            row = {
                "text": f"Write a function that adds {i} to x.",
                "code": f"def add_{i}(x):\n    return x + {i}\n",
                "task_id": i,
                "test_setup_code": "",
                "test_list": [f"assert add_{i}(1) == {1 + i}"],
                "challenge_test_list": [],
            }
            f.write(json.dumps(row) + "\n")
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (to prove a failed command changed nothing)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer):
    """A tokenizer folder, a reference model folder and a tokenized prepared dataset (train + validation)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WMTP_HF_CACHE", str(root / "cache"))
        tok_dir = root / "tok"
        tiny_tokenizer.save_pretrained(tok_dir)
        ref_dir = write_llama(root / "ref", tiny_tokenizer, seed=0, extra_vocab=4)
        data = write_mbpp(root / "mbpp.jsonl", [*range(601, 608), *range(511, 516)])
        prepared = root / "prepared"
        prepare("mbpp", prepared, path=str(data), splits=["train", "validation"], tokenizer=str(tok_dir))
        raw = root / "raw"
        prepare("mbpp", raw, path=str(data), splits=["train"])
    return {"root": root, "tok": tok_dir, "ref": ref_dir, "prepared": prepared, "raw": raw}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_HF_CACHE", str(tmp_path / "cache"))
    # compare against CPU-computed losses at atol 1e-5 on any machine, GPU or not
    monkeypatch.setattr(loading, "default_device", lambda: torch.device("cpu"))


def live_losses(ds: datasets.Dataset, model, pad_token_id: int, batch_size: int) -> list[np.ndarray]:
    collator = WmtpDataCollator(pad_token_id=pad_token_id)
    out = []
    for start in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        batch = collator(rows)
        losses = reference_token_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        out += [losses[i, : len(r["input_ids"])].numpy() for i, r in enumerate(rows)]
    return out


def test_cli_writes_reference_column(env, tmp_path, tiny_tokenizer, capsys):
    data = shutil.copytree(env["prepared"], tmp_path / "data")
    stats_before = (data / "stats.json").read_bytes()
    assert (
        main(
            ["reference-losses", "--dataset", str(data), "--reference", str(env["ref"]), "--batch-size", "3"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, ref_tok = load_reference_model(str(env["ref"]))
    fingerprint = reference_fingerprint(str(env["ref"]), ref_tok)
    assert summary["fingerprint"] == fingerprint["id"] and set(summary["splits"]) == {"train", "validation"}
    assert summary["rows"] == 12 and (data / "stats.json").read_bytes() == stats_before

    info = read_reference_cache(data)
    assert info == json.loads((data / "reference.json").read_text()) and info["batch_size"] == 3
    assert info["fingerprint"] == fingerprint and fingerprint["model"]["kind"] == "folder"
    for split in ("train", "validation"):
        ds = datasets.load_from_disk(str(data / split))
        assert ds.features[REFERENCE_COLUMN] == datasets.Sequence(datasets.Value("float32"))
        assert info["dataset_fingerprints"][split] == dataset_fingerprint(ds)
        live = live_losses(ds, model, tiny_tokenizer.pad_token_id, batch_size=3)
        for row, expected in zip(ds, live, strict=True):
            got = np.asarray(row[REFERENCE_COLUMN], dtype=np.float32)
            n = row["prompt_length"]
            assert got.shape == (len(row["input_ids"]),)
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert np.all(got[:n] == 0) and np.all(got[n:] > 0)
    # independently of losses.py: CE of token j from the logits at j-1
    row = datasets.load_from_disk(str(data / "train"))[0]
    ids = torch.tensor([row["input_ids"]])
    logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    n = row["prompt_length"]
    expected = -logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]]
    np.testing.assert_allclose(row[REFERENCE_COLUMN][n:], expected.detach().numpy(), atol=1e-5)
    # compute_reference_column gives the same values; a re-run replaces the column instead of adding one
    column = compute_reference_column(
        datasets.load_from_disk(str(data / "validation")), model, 0, batch_size=3
    )
    assert (
        main(
            [
                "reference-losses",
                "--dataset",
                str(data),
                "--reference",
                str(env["ref"]),
                "--split",
                "validation",
            ]
        )
        == 0
    )
    val = datasets.load_from_disk(str(data / "validation"))
    assert val.column_names.count(REFERENCE_COLUMN) == 1
    np.testing.assert_allclose(np.concatenate(val[REFERENCE_COLUMN]), np.concatenate(column), atol=1e-5)
    assert set(read_reference_cache(data)["dataset_fingerprints"]) == {"train", "validation"}
    assert sorted(p.name for p in data.parent.iterdir()) == ["data"]  # no temporary folders left behind


def test_model_fingerprint_follows_weights(env, tmp_path, tiny_tokenizer):
    ref = shutil.copytree(env["ref"], tmp_path / "copy")
    first = model_fingerprint(str(ref))
    assert (
        first["kind"] == "folder"
        and "config.json" in first["files"]
        and "model.safetensors" in first["files"]
    )
    assert "tokenizer.json" in first["files"]
    (ref / "README.md").write_text("a model card")
    (ref / "training_args.bin").write_bytes(b"trainer state")
    assert model_fingerprint(str(ref)) == first == model_fingerprint(str(env["ref"]))  # content, not location
    ids = {reference_fingerprint(str(p), tiny_tokenizer)["id"] for p in (ref, env["ref"])}
    assert len(ids) == 1
    model, _ = load_reference_model(str(ref))
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    model.save_pretrained(ref)
    changed = model_fingerprint(str(ref))
    assert changed["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    assert reference_fingerprint(str(ref), tiny_tokenizer)["id"] not in ids
    other = train_code_tokenizer(["x = 1\n"] * 5, vocab_size=262)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)
    assert tokenizer_fingerprint(tiny_tokenizer) == tokenizer_fingerprint(load_reference_model(str(ref))[1])


def test_hub_id_resolves_from_local_cache(env, tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    write_hub_snapshot(tmp_path / "hub", "org/tiny-ref", env["ref"], sha=sha)
    use_hub_cache(monkeypatch, tmp_path / "hub")
    assert model_fingerprint("org/tiny-ref") == {"kind": "hub", "repo_id": "org/tiny-ref", "revision": sha}
    model, tok = load_reference_model("org/tiny-ref")
    assert model.config.hidden_size == 32 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    fingerprint = reference_fingerprint("org/tiny-ref", tok)
    assert fingerprint["model"]["revision"] == sha and fingerprint["reference"] == "org/tiny-ref"
    with pytest.raises(DataError) as err:
        model_fingerprint("org/not-cached")
    msg = str(err.value)
    assert msg.startswith(
        "reference 'org/not-cached': no such folder, and not a Hub id found locally or on the Hub ("
    )
    assert "\n" not in msg


def test_tokenizer_mismatch_names_both(env, tmp_path, tiny_tokenizer, capsys):
    other = train_code_tokenizer(
        ["SELECT * FROM users WHERE id = 1;\n", "<html><body></body></html>\n"] * 20, 300
    )
    other_ref = write_llama(tmp_path / "other_ref", other, seed=0, extra_vocab=4)
    with pytest.raises(DataError) as err:
        check_same_tokenizer(tiny_tokenizer, other, "policy-dir", "ref-dir")
    msg = str(err.value)
    assert msg.startswith(
        "reference_model 'ref-dir' has a different tokenizer from the policy 'policy-dir': token "
    )
    assert " in the policy and " in msg and f"({len(tiny_tokenizer)} vs {len(other)} entries)" in msg
    check_same_tokenizer(
        tiny_tokenizer, load_reference_model(str(env["ref"]))[1], "p", "r"
    )  # padded embedding ok
    from transformers import AutoTokenizer

    bigger = AutoTokenizer.from_pretrained(env["tok"])
    bigger.add_tokens(["<extra_token>"])
    with pytest.raises(
        DataError, match=r"token '<extra_token>' is id 296 in the policy and missing in the reference"
    ):
        check_same_tokenizer(bigger, tiny_tokenizer, "p", "r")
    with pytest.raises(
        DataError, match=r"token '<extra_token>' is id 296 in the reference and missing in the policy"
    ):
        check_same_tokenizer(tiny_tokenizer, bigger, "p", "r")

    data = shutil.copytree(env["prepared"], tmp_path / "data")
    before = snapshot(data)
    capsys.readouterr()
    assert main(["reference-losses", "--dataset", str(data), "--reference", str(other_ref)]) == 2
    err_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the model-loading progress bars
    assert err_line.startswith(
        f"error: reference '{other_ref}' has a different tokenizer from the dataset tokenizer"
    )
    assert str(env["tok"]) in err_line and "\n" not in err_line
    assert snapshot(data) == before


def test_check_cached_fingerprint(env, tmp_path, tiny_tokenizer):
    data = shutil.copytree(env["prepared"], tmp_path / "data")
    with pytest.raises(DataError, match="has no reference.json"):
        check_cached_fingerprint(data, str(env["ref"]), tiny_tokenizer)
    info = add_reference_losses(data, str(env["ref"]), batch_size=4, splits=["train"])
    assert set(info["dataset_fingerprints"]) == {"train"}
    check_cached_fingerprint(data, str(env["ref"]), tiny_tokenizer)
    check_cached_fingerprint(
        info, str(shutil.copytree(env["ref"], tmp_path / "same"))
    )  # same content elsewhere
    other = write_llama(tmp_path / "other", tiny_tokenizer, seed=1, extra_vocab=4)
    with pytest.raises(DataError) as err:
        check_cached_fingerprint(data, str(other), tiny_tokenizer)
    msg = str(err.value)
    assert msg.startswith(
        f"dataset '{data}': its ref_token_losses were computed with reference '{env['ref']}' ("
    )
    assert f"but reference_model is '{other}' (fingerprint " in msg and "\n" not in msg
    assert msg.endswith(
        f"re-run python -m wmtp_hf.data reference-losses --dataset {data} --reference {other}"
    )
    # a split computed with another reference loses its stale column when only other splits are redone
    add_reference_losses(data, str(other), splits=["validation"])
    assert REFERENCE_COLUMN not in datasets.load_from_disk(str(data / "train")).column_names
    assert set(read_reference_cache(data)["dataset_fingerprints"]) == {"validation"}


class ExplodingModel(torch.nn.Module):
    """A reference whose forward must not run (cache hits)."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference model ran on a cache hit")


def test_precompute_reference_losses_caches(env, tmp_path, tiny_tokenizer):
    ds = datasets.load_from_disk(str(env["prepared"] / "train"))
    cache = tmp_path / "refcache"
    first = precompute_reference_losses(ds, str(env["ref"]), batch_size=2, cache_dir=cache)
    assert first.column_names == [*ds.column_names, REFERENCE_COLUMN] and len(first) == len(ds)
    (key,) = [p.name for p in cache.iterdir()]
    assert json.loads((cache / key / "reference.json").read_text())["fingerprint"]["reference"] == str(
        env["ref"]
    )
    model, _ = load_reference_model(str(env["ref"]))
    expected = compute_reference_column(ds, model, tiny_tokenizer.pad_token_id, batch_size=2)
    np.testing.assert_allclose(np.concatenate(first[REFERENCE_COLUMN]), np.concatenate(expected), atol=1e-6)
    again = precompute_reference_losses(
        ds, str(env["ref"]), batch_size=2, cache_dir=cache, model=ExplodingModel(), tokenizer=tiny_tokenizer
    )
    assert again[REFERENCE_COLUMN] == first[REFERENCE_COLUMN] and again["input_ids"] == ds["input_ids"]
    # other tokens -> another key; the tokens' hash ignores where the data lives
    subset = ds.select([2, 0])
    assert dataset_fingerprint(subset) != dataset_fingerprint(ds)
    assert dataset_fingerprint(datasets.Dataset.from_dict(ds.to_dict())) == dataset_fingerprint(ds)
    part = precompute_reference_losses(
        subset, str(env["ref"]), cache_dir=cache, model=model, tokenizer=tiny_tokenizer
    )
    assert len(list(cache.iterdir())) == 2 and part[REFERENCE_COLUMN] == [
        first[REFERENCE_COLUMN][i] for i in (2, 0)
    ]


def test_bad_input_exits_2_and_changes_nothing(env, tmp_path, capsys):
    data = shutil.copytree(env["prepared"], tmp_path / "data")
    raw = shutil.copytree(env["raw"], tmp_path / "raw")
    ref = str(env["ref"])
    cases = [
        (
            ["--dataset", str(tmp_path / "missing"), "--reference", ref],
            f"error: {tmp_path / 'missing'}: no such folder",
        ),
        (
            ["--dataset", str(raw), "--reference", ref],
            f"error: {raw}: not a tokenized prepared dataset (run `python",
        ),
        (
            ["--dataset", str(data), "--reference", ref, "--batch-size", "0"],
            "error: --batch-size: expected a positive",
        ),
        (
            ["--dataset", str(data), "--reference", ref, "--split", "nope"],
            f"error: {data}: no split 'nope'; available",
        ),
        (
            ["--dataset", str(data), "--reference", str(tmp_path / "no-model")],
            f"error: reference '{tmp_path / 'no-model'}': no such folder, and not a Hub id",
        ),
        (
            ["--dataset", str(data), "--reference", "org/absent"],
            "error: reference 'org/absent': no such folder",
        ),
        (
            ["--dataset", str(data), "--reference", ref, "--device", "nope"],
            "error: --device: not a torch device",
        ),
    ]
    before = {p: snapshot(p) for p in (data, raw)}
    capsys.readouterr()
    for argv, start in cases:
        assert main(["reference-losses", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, (argv, err)
        assert {p: snapshot(p) for p in (data, raw)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "raw"]


def test_wmtp_reference_and_unknown_dataset_tokenizer(env, tmp_path, tiny_tokenizer, caplog):
    """A WMTP checkpoint works as a reference (head 0); a dataset tokenizer that cannot be loaded is skipped."""
    wmtp = write_tiny_model(tmp_path / "wmtp", tiny_tokenizer)
    data = shutil.copytree(env["prepared"], tmp_path / "data")
    stats = json.loads((data / "stats.json").read_text())
    stats["tokenizer"] = str(tmp_path / "moved-away")
    (data / "stats.json").write_text(json.dumps(stats))
    with caplog.at_level("WARNING", logger="wmtp_hf.reference"):
        add_reference_losses(data, str(wmtp), batch_size=4, splits=["validation"], device="cpu")
    assert "could not load the dataset's tokenizer" in caplog.text and "not checked" in caplog.text
    row = datasets.load_from_disk(str(data / "validation"))[0]
    model, _ = load_reference_model(str(wmtp))
    ids, n = torch.tensor([row["input_ids"]]), row["prompt_length"]
    logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    expected = -logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]]
    np.testing.assert_allclose(row[REFERENCE_COLUMN][n:], expected.detach().numpy(), atol=1e-5)


def test_collator_pads_reference_losses():
    collator = WmtpDataCollator(pad_token_id=0)
    features = [
        {"input_ids": [5, 6, 7], "prompt_length": 1, REFERENCE_COLUMN: [0.0, 1.5, 2.5]},
        {"input_ids": [5, 6, 7, 8, 9], "prompt_length": 2, REFERENCE_COLUMN: [0.0, 0.0, 1.0, 2.0, 3.0]},
    ]
    batch = collator(features)
    assert batch[REFERENCE_COLUMN].dtype == torch.float32 and batch[REFERENCE_COLUMN].shape == (2, 5)
    assert batch[REFERENCE_COLUMN].tolist() == [[0.0, 1.5, 2.5, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0, 3.0]]
    assert REFERENCE_COLUMN not in collator([{"input_ids": [1, 2], "prompt_length": 1}])
    with pytest.raises(DataError, match="'ref_token_losses' has 2 items, 'input_ids' has 3"):
        collator([{"input_ids": [5, 6, 7], "prompt_length": 1, REFERENCE_COLUMN: [0.0, 1.0]}])
