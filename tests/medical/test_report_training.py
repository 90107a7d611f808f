"""Report generation trained briefly, end to end (phantoms -> shipped tokenizer -> ct-report task), against the
most-common-report baseline on clinical F1."""

from __future__ import annotations

from pathlib import Path

import pytest

# Measured with the sizes below (seed 0; 600 training volumes, 100 test volumes): test clinical F1 0.300 for
# the generated reports and 0.199 for the most common training report (validation: 0.327 and 0.223); the label
# head alone 0.331. The margin asserted leaves room for other BLAS builds and thread counts.
MARGIN = 0.05


@pytest.mark.slow
def test_brief_training_beats_the_most_common_report(tmp_path: Path):
    from mmseq.medical.cli import load_tokenizer
    from mmseq.medical.phantoms import make_ct_phantoms
    from mmseq.medical.tokens import tokenize_many
    from mmseq.runner.train import train

    root = tmp_path / "ct"
    make_ct_phantoms(root, n=800, seed=0, progress=False)
    volumes = sorted((root / "dataset").rglob("*.nii.gz"))
    done = tokenize_many(load_tokenizer(None).eval(), volumes, tmp_path / "tokens", progress=False)
    assert done["failed"] == 0
    config = Path(__file__).parents[2] / "configs" / "medical" / "report.yaml"
    metrics = train(config, [f"data.root={root}", f"data.tokens={tmp_path / 'tokens'}", "trainer.max_steps=600",
                             "trainer.val_check_interval=600", "trainer.checkpoint_every_n_steps=600",
                             "data.num_generate=100"], run_dir=tmp_path / "run")
    test = metrics["test"]
    assert test["test/f1"] >= test["test/baseline_f1"] + MARGIN, test
    # the head's labels reach the text: the report's clinical F1 is close to the head's own
    assert test["test/f1"] >= test["test/label_f1"] - 0.1, test
