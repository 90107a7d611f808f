"""mmseq.medical.labeler: the 18 CT-RATE abnormalities from report text, with negation, synonyms and look-alikes."""

from __future__ import annotations

import pytest
import torch

from mmseq.medical.ctrate import ABNORMALITIES, CTRate
from mmseq.medical.labeler import find_mentions, label_report, label_reports, split_clauses
from mmseq.medical.phantoms import PREVALENCE, make_ct_phantoms

from .conftest import TINY_PHANTOMS

PE, PCE, CM = "Pleural effusion", "Pericardial effusion", "Cardiomegaly"
AWC, CAC = "Arterial wall calcification", "Coronary artery wall calcification"

# (sentence, the abnormalities it asserts); written by hand: negations before and after the noun, lists under
# one negation, contrast words, uncertainty (positive), resolution (negative), synonyms and look-alike sites.
SENTENCES: list[tuple[str, set[str]]] = [
    ("No pleural effusion.", set()),
    ("Small left pleural effusion.", {PE}),
    ("Bilateral pleural effusion is not observed.", set()),
    ("The lungs are clear without evidence of consolidation.", set()),
    ("Heart size is enlarged.", {CM}),
    ("Heart size is normal. No pericardial effusion.", set()),
    ("Minimal pericardial effusion, no pleural effusion.", {PCE}),
    ("There is no pneumothorax, pleural effusion or consolidation.", set()),
    ("Atelectasis in the right lower lobe, but no consolidation.", {"Atelectasis"}),
    ("Consolidation in the left lower lobe has resolved.", set()),
    ("A 6 mm nodule in the right upper lobe, unchanged.", {"Lung nodule"}),
    ("A 12 mm hypodense nodule in the right thyroid lobe.", set()),
    ("Subcutaneous emphysema in the left chest wall.", set()),
    ("Centrilobular emphysematous changes in both upper lobes.", {"Emphysema"}),
    ("Calcified atherosclerotic plaques in the aortic arch.", {AWC}),
    ("Coronary artery calcifications are noted in the LAD.", {CAC}),
    ("Atheromatous plaques in the coronary arteries and the thoracic aorta.", {AWC, CAC}),
    ("No mediastinal or hilar lymphadenopathy.", set()),
    ("Pathologically enlarged lymph nodes in the subcarinal region.", {"Lymphadenopathy"}),
    ("Lymph nodes are not enlarged.", set()),
    ("Ground-glass opacities in both lungs, consistent with viral pneumonia.", {"Lung opacity"}),
    ("Mosaic attenuation pattern is seen in both lungs.", {"Mosaic attenuation pattern"}),
    ("Cylindrical bronchiectasis and peribronchial thickening in the lower lobes.",
     {"Bronchiectasis", "Peribronchial thickening"}),
    ("Interlobular septal thickening is not detected.", set()),
    ("Thickening of the interlobular septa in the lung bases.", {"Interlobular septal thickening"}),
    ("Sternotomy wires and a pacemaker are seen.", {"Medical material"}),
    ("A small sliding hiatal hernia is observed.", {"Hiatal hernia"}),
    ("Fibrotic bands in the left lower lobe.", {"Pulmonary fibrotic sequela"}),
    ("Pericardial effusion cannot be excluded.", {PCE}),
    ("No significant change in the size of the nodule.", {"Lung nodule"}),
    ("The heart is not enlarged.", set()),
    ("Cardiomegaly.", {CM}),
    ("Free of pleural effusion; bilateral lower lobe atelectasis.", {"Atelectasis"}),
    ("Neither pleural nor pericardial effusion is present.", set()),
    ("Pleural effusion on the right; the left is free of effusion.", {PE}),
    ("Compared to the previous exam, the consolidation has disappeared and no new nodule is seen.", set()),
    ("Air bronchograms are present within the consolidated right lower lobe.", {"Consolidation"}),
    ("Dilated bronchi in the middle lobe.", {"Bronchiectasis"}),
    ("Mild cardiac enlargement.", {CM}),
    ("Nodular opacity in the left upper lobe.", {"Lung nodule", "Lung opacity"}),
    ("Port catheter tip in the superior vena cava.", {"Medical material"}),
    ("No emphysema, bullae or blebs.", set()),
    ("Calcified nodule in the liver.", set()),
    ("The cardiac silhouette is within normal limits; there is no cardiomegaly.", set()),
    ("Heart is enlarged and pleural effusion is not seen.", {CM}),
    ("Pleural effusion was not observed, however a small pericardial effusion is present.", {PCE}),
    ("No pleural effusion, pneumothorax or consolidation is seen.", set()),
    ("Emphysema is absent.", set()),
    ("Bronchial walls are thickened.", {"Peribronchial thickening"}),
    ("There are no pathologically enlarged lymph nodes in the mediastinum.", set()),
    ("Multiple nodules in both lungs, the largest measuring 9 mm.", {"Lung nodule"}),
    ("Aortic wall calcification is not seen.", set()),
    ("Vascular calcifications of the aortic arch and coronary arteries.", {AWC, CAC}),
    ("Linear atelectasis and fibrotic sequelae in the right middle lobe.",
     {"Atelectasis", "Pulmonary fibrotic sequela"}),
    ("No mass or infiltration.", set()),
    ("Hiatus hernia.", {"Hiatal hernia"}),
    ("Interlobular septa are not thickened.", set()),
]


@pytest.mark.parametrize("text, expected", SENTENCES, ids=[f"{i:02d}" for i in range(len(SENTENCES))])
def test_hand_written_sentences(text, expected):
    got = {name for name, present in label_report(text).items() if present}
    assert got == expected, [m for m in find_mentions(text)]


def test_label_report_covers_the_18_in_order():
    out = label_report("")
    assert list(out) == list(ABNORMALITIES) and not any(out.values())
    assert len(ABNORMALITIES) == 18


@pytest.mark.parametrize("prevalence", [None, 0.5], ids=["default-prevalence", "half-of-each"])
def test_recovers_every_generated_report_label_row(tmp_path, prevalence):
    """labeler(findings + impressions) equals the label CSV row of every generated phantom (60 per case)."""
    prev = None if prevalence is None else dict.fromkeys(PREVALENCE, prevalence)
    make_ct_phantoms(tmp_path / "set", n=60, seed=11, progress=False, valid_fraction=0.2, prevalence=prev,
                     **TINY_PHANTOMS)
    checked = 0
    for split in ("train", "valid"):
        ds = CTRate(tmp_path / "set", split)
        reports = [ds.report(i) for i in range(len(ds))]
        predicted = label_reports(reports)
        truth = ds.label_matrix()
        for i in range(len(ds)):
            assert torch.equal(predicted[i], truth[i]), (ds.names[i], reports[i])
        checked += len(ds)
    assert checked == 60


def test_find_mentions_and_clauses():
    text = "Heart is enlarged and pleural effusion is not seen. No nodule, but a small hiatal hernia."
    assert split_clauses(text) == ["heart is enlarged", "and pleural effusion is not seen", "no nodule",
                                   "a small hiatal hernia"]
    got = {(m.label, m.negated) for m in find_mentions(text)}
    assert got == {(CM, False), (PE, True), ("Lung nodule", True), ("Hiatal hernia", False)}


def test_label_reports_shape_and_type():
    out = label_reports(["Cardiomegaly.", "No pleural effusion.", ""])
    assert out.dtype == torch.bool and out.shape == (3, 18)
    assert out[0].nonzero().flatten().tolist() == [ABNORMALITIES.index(CM)] and not out[1:].any()
    assert label_reports([]).shape == (0, 18)
    with pytest.raises(TypeError, match="sequence of reports"):
        label_reports("Cardiomegaly.")
