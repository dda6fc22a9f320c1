"""`flaxbert bench` on tiny configs: the real train step and forward, timed, with MFU fields and
a transformers PyTorch row from the same run. Speed itself is never asserted here."""
import json

import pytest

from flaxbert.bench import format_table


@pytest.mark.parametrize("model", ["bert-tiny"])
def test_bench_runs_train_and_inference_against_torch(model, tmp_path, capsys):
    from flaxbert.cli import main
    out = tmp_path / "rows.json"
    rc = main(["bench", "--model", model, "--seq-len", "32", "--batch-size", "4", "--dtype",
               "float32", "--steps", "2", "--warmup", "1", "--compare-torch", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert {(r["impl"], r["mode"]) for r in rows} == {
        ("flaxbert", "train"), ("flaxbert", "inference"),
        ("torch eager", "train"), ("torch eager", "inference")}
    for r in rows:
        assert r["seq_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(r["seq_per_s"] * 32)
        assert r["tflops_per_s"] > 0
        assert r["mfu"] is None  # CPU: no known peak, so no made-up MFU
    printed = capsys.readouterr().out
    assert "FLOPs formula" in printed and "vs torch" in printed and "1.00x" in printed


def test_table_ratios_are_against_torch_eager_of_the_same_mode():
    row = dict(model="m", seq_len=8, batch=2, tokens_per_s=0, tflops_per_s=0, mfu=None,
               step_ms=1, compile_s=0)
    rows = [dict(row, impl="flaxbert", mode="train", seq_per_s=300.0),
            dict(row, impl="torch eager", mode="train", seq_per_s=100.0),
            dict(row, impl="flaxbert", mode="inference", seq_per_s=50.0),
            dict(row, impl="torch eager", mode="inference", seq_per_s=100.0)]
    lines = format_table(rows).splitlines()
    assert lines[1].rstrip().endswith("3.00x") and lines[3].rstrip().endswith("0.50x")


def test_bench_refuses_a_sequence_longer_than_the_model(capsys):
    from flaxbert.cli import main
    assert main(["bench", "--model", "bert-tiny", "--seq-len", "4096", "--steps", "1"]) == 2
    assert "4096" in capsys.readouterr().err


def test_table_command_writes_markdown_with_device_and_ratios(tmp_path, monkeypatch, capsys):
    from flaxbert import bench
    from flaxbert.cli import main
    monkeypatch.setattr(bench, "TABLE_MODELS", ("bert-tiny", "xlnet-tiny"))
    monkeypatch.setattr(bench, "TABLE_SHAPES", ((16, 2),))
    monkeypatch.setattr(bench, "NO_TORCH_TWIN", {"xlnet-tiny": "no twin"})
    out = tmp_path / "table.md"
    assert main(["bench", "--table", "--markdown", str(out), "--dtype", "float32", "--steps",
                 "1", "--warmup", "0", "--mode", "inference"]) == 0
    text = out.read_text()
    assert "bert-tiny" in text and "xlnet-tiny" in text and "torch.compile" in text
    assert "- xlnet-tiny: no twin" in text and "float32" in text
