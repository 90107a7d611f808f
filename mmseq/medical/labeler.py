"""Rule-based labeler: free-text chest CT report -> CT-RATE's 18 abnormalities, with NegEx-style negation.

CT-RATE's own labels come from a RadBERT classifier (refs/btb3d.md section 6) whose weights are not reachable
offline; this labeler is a transparent stand-in that report metrics (``report_metrics``) run on both generated
and reference reports.

How a report is read:

1. Lower-cased and split into sentences at ". ", ";", "!", "?", ":" and line breaks (not at decimal points).
2. Sentences are split into clauses at contrast words ("but", "however", "although", "whereas", ...), and at
   commas / "and" where both sides carry their own verb ("The heart is enlarged and pleural effusion is not
   seen" is two clauses; "No pleural effusion, pneumothorax or consolidation is seen" stays one).
3. In each clause every synonym pattern of every abnormality is matched. A pattern marks its key words (the
   noun, and the predicate for "heart ... enlarged" forms); a mention is negated when a key word lies in the
   scope of a negation trigger:
   - pre-triggers ("no", "not", "without", "negative for", "free of", "absence of", "resolution of",
     "neither", "nor", ...) reach forward to the next verb ("is", "were", "seen", ...), to ", the" /
     "and a"-style joins, or to the end of the clause;
   - post-triggers ("is not seen", "was not observed", "were not detected", "has resolved", "is absent",
     "no longer seen", "ruled out", ...) reach back to the previous verb or the start of the clause;
   - pseudo-triggers ("no change", "no significant interval change", "cannot be excluded", "not ruled out",
     "not only", ...) are not negations and mask the trigger words inside them (uncertain = positive).
   Site words veto look-alikes: a nodule of the thyroid, liver, adrenal, kidney or breast is not a lung
   nodule; subcutaneous or mediastinal emphysema is not emphysema; coronary arteries are not "arterial wall".
4. An abnormality is positive when at least one of its mentions is not negated.

``label_report(text) -> {name: bool}``; ``label_reports(texts) -> bool tensor [N, 18]`` in ABNORMALITIES order;
``find_mentions(text)`` shows each mention with its negation status (for debugging a rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .ctrate import ABNORMALITIES

__all__ = ["ABNORMALITIES", "Mention", "find_mentions", "label_report", "label_reports", "split_clauses"]

# one word of a gap between the two parts of a two-part pattern; the gap never crosses a negation word
_W = r"(?:[\s,]+(?!(?:no|not|without|nor|neither)\b)[\w-]+)"
_CALC = r"calcif\w*|atheroma\w*|atherosclero\w*|(?:calcified\s+)?plaques?"
_ART_SITE = (r"aort\w*|(?<!coronary )arterial|(?<!coronary )arter(?:y|ies)|vascular|(?<!coronary )vessels?|"
             r"carotid\w*|subclavian|brachiocephalic|innominate|iliac|supra-?aortic|arch")
_COR_SITE = r"coronar\w*|lad|lcx|rca|left anterior descending|circumflex"

_PATTERNS: dict[str, list[str]] = {
    "Medical material": [
        r"\b(?:pacemakers?|defibrillators?|icd|cardiac devices?|stents?|stent-grafts?|sternotomy|sternal\s+wires?|"
        r"sternal\s+sutures?|cerclage\s+wires?|(?:surgical|vascular|metallic)\s+(?:clips?|sutures?|materials?|"
        r"wires?|staples?)|clips?|catheters?|port[- ]a[- ]cath|chemoport|port\s+catheters?|"
        r"(?:endotracheal|tracheostomy|nasogastric|chest|thoracostomy|drainage)\s+tubes?|tracheostomy\s+cannula|"
        r"prosthe(?:sis|ses|tic)\w*|(?:aortic\s+|mitral\s+)?valve\s+replacement|cabg|bypass\s+grafts?|coils?|"
        r"(?:pacemaker|pacing|cardiac)\s+leads?|electrodes?|implants?|medical\s+(?:devices?|materials?)|"
        r"foreign\s+bod(?:y|ies)|surgical\s+materials?)\b",
    ],
    "Arterial wall calcification": [
        rf"\b(?:{_ART_SITE})\b{_W}{{0,5}}?[\s,]+(?P<h>{_CALC})\b",
        rf"\b(?P<h>{_CALC}){_W}{{0,7}}?[\s,]+(?:{_ART_SITE})\b",
    ],
    "Cardiomegaly": [
        r"\bcardiomegal\w*",
        r"\b(?P<h>heart|cardiac\s+silhouette|cardiac\s+contour|cardiac\s+size|cardiac\s+shadow)\b"
        rf"{_W}{{0,4}}?[\s,]+(?:not\s+)?(?P<p>enlarged|increased|enlargement)\b",
        r"\b(?P<p>enlarged|increased)\s+(?P<h>heart|cardiac\s+(?:size|silhouette|contour|dimensions?))\b",
        r"\bcardiac\s+enlargement|\bincreased\s+cardiothoracic\s+ratio|\bcardiothoracic\s+ratio\s+(?:is\s+)?"
        r"increased",
    ],
    "Pericardial effusion": [
        r"\bpericardi\w*\s+(?P<h>effusions?|fluid)",
        r"\b(?P<h>fluid|effusion)\s+(?:collection\s+)?(?:in|within)\s+the\s+pericardi\w*",
        r"\bh(?:a)?emopericardium|\bhydropericardium",
    ],
    "Coronary artery wall calcification": [
        rf"\b(?:{_COR_SITE})\b{_W}{{0,5}}?[\s,]+(?P<h>{_CALC})\b",
        rf"\b(?P<h>{_CALC}){_W}{{0,7}}?[\s,]+(?:{_COR_SITE})\b",
    ],
    "Hiatal hernia": [
        r"\bhiat(?:al|us)\s+hernia\w*|\bhiatal\s+herniation|\bhernia\w*\s+(?:of\s+the\s+stomach\s+)?(?:through|at)"
        r"\s+the\s+(?:(?:o)?esophageal\s+)?hiatus|\bintrathoracic\s+stomach",
    ],
    "Lymphadenopathy": [
        r"\b(?:lymphadenopath\w*|adenopath\w*|lymphadenomegaly)",
        r"\b(?P<p>enlarged|pathologic(?:al(?:ly)?)?(?:\s+enlarged)?|prominent|bulky|conglomerated?)"
        r"(?:\s+[\w-]+){0,3}?\s+(?P<h>lymph\s+nodes?|nodes)\b",
        rf"\b(?P<h>lymph\s+nodes?){_W}{{0,8}}?[\s,]+(?P<p>enlarged|enlargement|pathologic\w*|increased\s+in\s+size|"
        r"exceeding|larger\s+than|greater\s+than)\b",
    ],
    "Emphysema": [
        r"(?<!subcutaneous )(?<!soft tissue )(?<!mediastinal )(?<!interstitial )\bemphysema\w*|\bbullae\b|"
        r"\bbulla\b|\bbullous\b|\bblebs?\b",
    ],
    "Atelectasis": [
        r"\b\w*atelecta\w*|\b(?:lobar|segmental|subsegmental|lung|lobe)\s+collapse|\bcollapsed?\s+(?:lung|lobe|"
        r"segment)|\bvolume\s+loss",
    ],
    "Lung nodule": [
        r"\b(?:micro)?nodules?\b|\bnodular\s+(?:lesions?|densit\w*|opacit\w*|infiltrat\w*)|"
        r"\b(?:pulmonary|lung|parenchymal)\s+mass(?:es)?\b|\bmass\s+lesions?\b",
    ],
    "Lung opacity": [
        r"\bground[- ]glass\w*|\bopacit(?:y|ies)\b|\binfiltrat\w*|\bhaziness\b|\bdensity\s+increases?\b|"
        r"\bincreased\s+(?:parenchymal\s+)?densit\w*",
    ],
    "Pulmonary fibrotic sequela": [
        r"\bfibro(?!adenom|id|glandular|cystic|mus)\w*|\bsequela\w*|\bparenchymal\s+bands?\b|\bscar(?:s|ring)?\b|"
        r"\bfibrous\s+(?:bands?|strands?|stripes?)",
    ],
    "Pleural effusion": [
        r"\bpleural\s+(?:(?:and|or|/|,)\s*pericardial\s+)?(?P<h>effusions?|fluid)",
        r"(?<!pericardial )(?<!pericardial and )(?<!joint )\b(?P<h>effusions?)\b",
        r"\bhydrothorax|\b(?P<h>fluid)\s+(?:collection\s+)?in\s+the\s+pleural\s+(?:space|cavity|cavities)",
    ],
    "Mosaic attenuation pattern": [r"\bmosaic\w*"],
    "Peribronchial thickening": [
        r"\bperibronchial\s+(?:wall\s+)?(?P<h>thickening|thickenings|cuffing|thickened|infiltration)",
        r"\bbronch\w*\s+wall\s+(?P<h>thickening|thickenings|thickened)",
        rf"\bbronch\w*\s+walls?{_W}{{0,3}}?[\s,]+(?:not\s+)?(?P<p>thicken\w*)",
        r"\b(?P<p>thicken\w*)\s+(?:of\s+)?(?:the\s+)?(?:peri)?bronch\w*\s+walls?",
    ],
    "Consolidation": [r"\bconsolidat\w*|\bair[- ]bronchograms?"],
    "Bronchiectasis": [
        r"\bbronchiectas\w*|\bbronchiectatic|\bbronchiolectas\w*|\b(?:dilated|ectatic)\s+(?:bronchi|bronchus|"
        r"bronchioles|airways)\b|\bbronchial\s+(?:dilatation|dilation)|\bdilatation\s+of\s+(?:the\s+)?bronch\w*",
    ],
    "Interlobular septal thickening": [
        r"(?<!ventricular )(?<!atrial )\b(?:interlobular\s+)?sept(?:al|a)\s+(?:(?:is|are)\s+)?(?:not\s+)?"
        r"(?P<h>thickening|thickenings|thickened|lines)",
        r"\b(?P<p>thicken\w*)\s+(?:of\s+)?(?:the\s+)?(?:interlobular\s+)?septa\b|\bcrazy[- ]paving|\bkerley",
    ],
}
assert tuple(_PATTERNS) == ABNORMALITIES

# look-alikes: a mention whose neighbourhood (30 characters before, 40 after) matches is not counted
_VETO: dict[str, re.Pattern] = {
    "Lung nodule": re.compile(r"\b(?:thyroid\w*|adrenal|liver|hepatic|renal|kidneys?|breasts?|spleen|splenic|"
                              r"pancrea\w*|lymph|pleural|skin|subcutaneous)\b"),
}

_COMPILED = {name: [re.compile(p) for p in pats] for name, pats in _PATTERNS.items()}

_PSEUDO = re.compile(
    r"\bno\s+(?:significant\s+|interval\s+|definite\s+|marked\s+)*(?:change|increase|progression|difference|growth)"
    r"|\bnot\s+only\b|\bwithout\s+(?:significant\s+|any\s+)?(?:change|progression|growth)"
    r"|\b(?:cannot|can\s*not|could\s+not|can't|may\s+not|not)\s+be\s+(?:excluded|ruled\s+out)"
    r"|\bnot\s+(?:been\s+)?(?:excluded|ruled\s+out)|\bnot\s+(?:significantly\s+)?(?:changed|increased)")
_POST = re.compile(
    r"(?:\b(?:is|are|was|were|has\s+been|have\s+been|had\s+been)\s+)?\bnot\s+(?:been\s+)?"
    r"(?P<v1>seen|observed|detected|identified|present|noted|visuali[sz]ed|found|evident|demonstrated|appreciated|"
    r"visible|shown|apparent|encountered|depicted|recogni[sz]ed|determined)\b"
    r"|\b(?:cannot|can\s*not|could\s+not|did\s+not|does\s+not|do\s+not)\s+(?:be\s+)?"
    r"(?:seen|observed|detected|identified|visuali[sz]ed|demonstrated|found|detect|identify|see|show)\b"
    r"|(?:\b(?:has|have|had)\s+(?:been\s+)?)?(?:\bcompletely\s+)?\b(?:resolved|disappeared|regressed\s+completely)\b"
    r"|(?:\b(?:is|are|was|were)\s+)?\b(?:absent|ruled\s+out|excluded)\b"
    r"|(?:\b(?:is|are|was|were)\s+)?\bno\s+longer\s+(?:seen|present|visible|evident|observed|detected|identified)\b")
_PRE = re.compile(r"\b(?:negative\s+for|free\s+of|absence\s+of|resolution\s+of|rather\s+than|no|not|without|"
                  r"neither|nor|never)\b")
_VERB = re.compile(r"\b(?:is|are|was|were|be|been|has|have|had|shows?|showed|demonstrates?|demonstrated|reveals?|"
                   r"revealed|appears?|appeared|seen|noted|observed|detected|identified|present|visuali[sz]ed|"
                   r"evident|visible|persists?|persisted|remains?|remained|measures?|measuring|contains?)\b")
# a join that starts a new noun phrase ends a pre-trigger's reach: "no effusion, the heart is enlarged"
_JOIN = re.compile(r"(?:,|\band\b)\s+(?:the|a|an|there|it|this|these)\b")
_CONTRAST = re.compile(r"\b(?:but|however|although|though|whereas|while|except|apart\s+from|aside\s+from|yet|"
                       r"nevertheless|otherwise)\b")
_SOFT = re.compile(r"(,|\band\b)")
_SENTENCE = re.compile(r"(?<!\d)\.(?!\d)|[;!?:\n]")


@dataclass(frozen=True)
class Mention:
    """One synonym match: which abnormality, the matched text, its clause and whether it is negated."""

    label: str
    text: str
    clause: str
    negated: bool


def split_clauses(text: str) -> list[str]:
    """Lower-case ``text`` and split it into the clauses negation scopes stay within (see the module doc)."""
    clauses: list[str] = []
    for sentence in _SENTENCE.split(text.lower()):
        for part in _CONTRAST.split(sentence):
            pieces = _SOFT.split(part)  # [seg, sep, seg, sep, ...]
            merged: list[str] = []
            pending = ""
            for i in range(0, len(pieces), 2):
                pending += (pieces[i - 1] if i else "") + pieces[i]
                if _VERB.search(pieces[i]):
                    merged.append(pending)
                    pending = ""
            if pending:  # a verbless tail ("..., no pericardial effusion") belongs to the clause before it
                if merged:
                    merged[-1] += pending
                else:
                    merged.append(pending)
            clauses.extend(c.strip(" ,") for c in merged if c.strip(" ,"))
    return clauses


def _overlaps(span: tuple[int, int], spans: Iterable[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in spans)


def _negated_scopes(clause: str) -> list[tuple[int, int]]:
    pseudo = [m.span() for m in _PSEUDO.finditer(clause)]
    post = [m.span() for m in _POST.finditer(clause) if not _overlaps(m.span(), pseudo)]
    verbs = [m.span() for m in _VERB.finditer(clause) if not _overlaps(m.span(), post)]
    joins = [m.start() for m in _JOIN.finditer(clause)]
    scopes: list[tuple[int, int]] = []
    for m in _PRE.finditer(clause):
        if _overlaps(m.span(), pseudo) or _overlaps(m.span(), post):
            continue
        ends = [s for s, _ in verbs if s >= m.end()] + [j for j in joins if j >= m.end()] + [len(clause)]
        scopes.append((m.end(), min(ends)))
    for s, _ in post:
        starts = [e for _, e in verbs if e <= s] + [0]
        scopes.append((max(starts), s))
    return scopes


def _key_positions(m: re.Match) -> list[int]:
    keys = [m.start(g) for g in ("h", "p") if g in m.re.groupindex and m.start(g) >= 0]
    return keys or [m.start()]


def find_mentions(text: str) -> list[Mention]:
    """Every abnormality mention in ``text``, in report order per clause, each with its negation status."""
    out: list[Mention] = []
    for clause in split_clauses(text):
        scopes = _negated_scopes(clause)
        for label, patterns in _COMPILED.items():
            veto = _VETO.get(label)
            for pattern in patterns:
                for m in pattern.finditer(clause):
                    if veto is not None and veto.search(clause[max(0, m.start() - 30): m.end() + 40]):
                        continue
                    negated = any(s <= k < e for k in _key_positions(m) for s, e in scopes)
                    out.append(Mention(label, m.group(0), clause, negated))
    return out


def label_report(text: str) -> dict[str, bool]:
    """{abnormality: present} for one report (ABNORMALITIES order); present = some mention is not negated."""
    positive = {m.label for m in find_mentions(text or "") if not m.negated}
    return {name: name in positive for name in ABNORMALITIES}


def label_reports(texts: Sequence[str]) -> torch.Tensor:
    """Labels of many reports as a bool tensor [N, 18] in ABNORMALITIES order."""
    if isinstance(texts, str):
        raise TypeError("label_reports takes a sequence of reports; use label_report for one text")
    rows = [list(label_report(t).values()) for t in texts]  # label_report keeps ABNORMALITIES order
    return torch.tensor(rows, dtype=torch.bool).reshape(len(rows), len(ABNORMALITIES))
