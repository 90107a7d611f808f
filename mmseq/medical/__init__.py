"""mmseq.medical: CT volumes in (NIfTI, DICOM), BTB3D-style causal 3D tokens out, reports from the tokens."""
