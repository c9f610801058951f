"""Finished runs keep their identity when ssl4gie gains options: options added later count only where they
change what a run computes, so a relaunched sweep still finds its finished cells (these fingerprints were
computed before the optimiser, schedule, validation-cadence and split options existed)."""

from __future__ import annotations

import pytest
from helpers import compose_config

from ssl4gie.run.identity import fingerprint
from ssl4gie.run.weights import InitialWeights

BEFORE = {
    ("task=segmentation",): "52e54df1fc614805",
    ("task=classification", "row=rn_in_mc"): "718f31c62147ef8d",
    ("task=depth", "backbone=vit_b"): "ea866bde2938cdba",
    ("task=detection", "backbone=vit_b"): "99744c7a03d2c1ec",
    ("column=cvc_clinicdb", "row=vt_hk_ma"): "2885150a6179359c",
    ("task=classification", "dataset=hyperkvasir_pathological"): "d9b4c6fa98c73191",
}


@pytest.mark.parametrize("overrides", sorted(BEFORE))
def test_default_cells_keep_their_fingerprints(overrides, tmp_path):
    assert fingerprint(compose_config(list(overrides), tmp_path), InitialWeights()) == BEFORE[overrides]


@pytest.mark.parametrize(
    "option",
    [
        "trainer.optimizer.name=lars",
        "trainer.scheduler.name=warmup_cosine",
        "trainer.val_every=2",
        "dataset.train_fraction=0.5",
        "dataset.folds=5",
    ],
)
def test_a_new_option_that_acts_changes_the_fingerprint(option, tmp_path):
    assert (
        fingerprint(compose_config(["task=segmentation", option], tmp_path), InitialWeights())
        != BEFORE[("task=segmentation",)]
    )
