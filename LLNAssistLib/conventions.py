"""The one source of LLNAssist's conventions: label values, names, colours, codes, cut-offs.

Everything else imports from here; nothing else defines a label value, colour or code.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- label map values (model output and exported datasets) ---------------------------------
BACKGROUND = 0
INTERNAL_ILIAC = 1
OBTURATOR = 2
EXTERNAL_ILIAC = 3
NODE_NEGATIVE = 4
NODE_POSITIVE = 5

REGION_LABELS = (INTERNAL_ILIAC, OBTURATOR, EXTERNAL_ILIAC)
NODE_LABELS = (NODE_NEGATIVE, NODE_POSITIVE)
NUM_CLASSES = 6

REGION_CODE = {INTERNAL_ILIAC: "II", OBTURATOR: "OB", EXTERNAL_ILIAC: "EI"}
REGION_LABEL_FROM_CODE = {v: k for k, v in REGION_CODE.items()}
REGION_NAME = {"II": "Internal iliac", "OB": "Obturator", "EI": "External iliac"}

STATUS_FROM_LABEL = {NODE_NEGATIVE: "negative", NODE_POSITIVE: "positive"}
LABEL_FROM_STATUS = {v: k for k, v in STATUS_FROM_LABEL.items()}

SIDES = ("left", "right")

LABEL_NAMES = {
    BACKGROUND: "background",
    INTERNAL_ILIAC: "internal iliac region",
    OBTURATOR: "obturator region",
    EXTERNAL_ILIAC: "external iliac region",
    NODE_NEGATIVE: "lymph node, negative",
    NODE_POSITIVE: "lymph node, positive",
}

# Colours follow Figure 1 of Qiao et al. (Front Oncol 2025) (RGB 0-255).
LABEL_COLORS = {
    INTERNAL_ILIAC: (220, 50, 47),
    OBTURATOR: (50, 160, 60),
    EXTERNAL_ILIAC: (150, 80, 190),
    NODE_NEGATIVE: (40, 110, 230),
    NODE_POSITIVE: (250, 210, 30),
}


def region_segment_name(region_code: str, side: str) -> str:
    """'Internal iliac region (left)' etc., as in the DESIGN.md table."""
    return f"{REGION_NAME[region_code]} region ({side})"


def node_segment_name(node_id: str, status: str, side: str = "", region_code: str = "") -> str:
    """'Node 3 (positive)' plus, when known, side and region: 'Node 3 (positive) left OB'."""
    name = f"Node {node_id} ({status})"
    extra = " ".join(x for x in (side, region_code) if x)
    return f"{name} {extra}" if extra else name


# --- terminology (DICOM, SCT) ---------------------------------------------------------------
@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


LYMPH_NODE = Code("59441001", "SCT", "Lymph node")
ANATOMIC_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
REGION_SITE_CODE = {
    "II": Code("69255009", "SCT", "Hypogastric lymph node"),
    "OB": Code("36086000", "SCT", "Obturator lymph node"),
    "EI": Code("65349008", "SCT", "External iliac lymph node"),
}
LATERALITY_CODE = {"left": Code("7771000", "SCT", "Left"), "right": Code("24028007", "SCT", "Right")}
SHORT_AXIS_CODE = Code("103340004", "SCT", "Short axis")
LONG_AXIS_CODE = Code("103339001", "SCT", "Long axis")
# No standard code exists for a malignancy call or for the morphology features: private codes.
PRIVATE_SCHEME = "99LLNASSIST"
STATUS_CODE = {
    "positive": Code("LLN-POS", PRIVATE_SCHEME, "Lymph node, suspicious for metastasis"),
    "negative": Code("LLN-NEG", PRIVATE_SCHEME, "Lymph node, not suspicious for metastasis"),
}

# DICOM SR (TID 1500) content: standard codes where DICOM has them ...
VOLUME_CODE = Code("118565006", "SCT", "Volume")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
UCUM_MM = Code("mm", "UCUM", "mm")
UCUM_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UCUM_NO_UNITS = Code("1", "UCUM", "no units")
# ... and private ones (scheme 99LLNASSIST) for what it has no concept of: the criteria of Yoo et al.
# (Sci Rep 2025) and Qiao et al. (Front Oncol 2025), the model's call and the radiomics score.
SR_SIZE_CRITERION = Code("LLN-SIZE", PRIVATE_SCHEME, "Short axis at or above the size cut-off")
SR_IRREGULAR_BORDER = Code("LLN-BORDER", PRIVATE_SCHEME, "Irregular border")
SR_HETEROGENEOUS_SIGNAL = Code("LLN-SIGNAL", PRIVATE_SCHEME, "Heterogeneous signal")
SR_MODEL_STATUS = Code("LLN-DLSTATUS", PRIVATE_SCHEME, "Lymph node status by the model")
SR_RADIOMICS_SCORE = Code("LLN-RADSCORE", PRIVATE_SCHEME, "Clinical-radiomics score")
SR_RADIOMICS_PROBABILITY = Code("LLN-RADPROB", PRIVATE_SCHEME, "Clinical-radiomics probability of metastasis")
SR_PATIENT_STATUS = Code("LLN-PATIENT", PRIVATE_SCHEME, "Lateral lymph node status of the patient")
SR_CODING_SCHEME_NAME = "LLNAssist private codes"

# --- segment tags (MRML and .seg.nrrd) ----------------------------------------------------------
# Provenance as QuantitativeReporting records it: who made the segment.
TAG_KIND = "LLNAssist.Kind"  # "region" or "node"
TAG_PROVENANCE = "LLNAssist.Provenance"
TAG_STATUS = "LLNAssist.Status"  # "positive" / "negative"
TAG_STATUS_CODE = "LLNAssist.StatusCode"
TAG_NODE_ID = "LLNAssist.NodeId"
TAG_STATUS_SOURCE = "LLNAssist.StatusSource"  # "model", "criteria" or "reader" (a reader's override)
# Who reviewed (and corrected) the case for a site model's training data; set on every segment.
TAG_REVIEWED_BY = "LLNAssist.ReviewedBy"
TAG_REVIEWED_AT = "LLNAssist.ReviewedAt"
TAG_MASK_HASH = "LLNAssist.MaskHash"  # of the mask as LLNAssist last wrote it: detects user edits
# Set on every segment of a result forced past the domain gate (--force): why it is out of domain.
TAG_OUT_OF_DOMAIN = "LLNAssist.OutsideValidatedDomain"
OUT_OF_DOMAIN_NOTICE = "OUTSIDE THE MODEL'S VALIDATED DOMAIN (analysed with --force)"
PROVENANCE_AUTOMATIC = "automatic"  # the model's output, untouched
PROVENANCE_SEMI_AUTOMATIC = "semi-automatic"  # click-to-segment, or a model segment the user edited
PROVENANCE_MANUAL = "manual"  # drawn by the user
TERMINOLOGY_CONTEXT = "LLNAssist lateral lymph nodes"
# Region segments are drawn translucent so the nodes inside stay visible.
REGION_OPACITY = 0.35

# --- clinical cut-offs ------------------------------------------------------------------------
# Primary staging (JSCCR, as in Qiao et al., Front Oncol 2025): short axis >= 7 mm.
PRIMARY_SHORT_AXIS_MM = 7.0
# Restaging after neoadjuvant therapy (Lateral Node Consortium): strictly greater than these.
RESTAGING_SHORT_AXIS_MM = {"II": 4.0, "OB": 6.0}
# Number of malignant morphology features (irregular border, heterogeneous signal) that make a
# node suspicious regardless of size (Qiao et al., Front Oncol 2025).
MALIGNANT_FEATURES_NEEDED = 2

# --- radiomics (Yoo et al., Sci Rep 2025) ----------------------------------------------------------------------
RADIOMICS_INTERCEPT = -3.129
RADIOMICS_COEFFICIENTS = {
    "original_glcm_InverseVariance": 17.75,
    "original_ngtdm_Coarseness": -11.79,
    "original_shape_Elongation": 1.349,
    "original_glcm_MCC": -1.249,
    "original_gldm_DependenceEntropy": 0.3133,
    "original_gldm_LargeDependenceHighGrayLevelEmphasis": 0.00002075,
}
RADIOMICS_CUTOFF = -0.47
CLINICAL_RADIOMICS_INTERCEPT = -3.6169
CLINICAL_RADIOMICS_COEFFICIENTS = {
    "original_glcm_InverseVariance": 17.57,
    "original_ngtdm_Coarseness": -14.06,
    "original_shape_Elongation": 1.638,
    "original_glcm_MCC": -0.8323,
    "original_gldm_DependenceEntropy": 0.3008,
    "original_gldm_LargeDependenceHighGrayLevelEmphasis": 0.00002171,
    "original_ngtdm_Complexity": 0.0000006628,
}
CLINICAL_COEFFICIENTS = {"sex_female": 0.4421, "neoadjuvant_radiotherapy": -0.2747}
RADIOMICS_RESAMPLED_SPACING_MM = 1.0
RADIOMICS_BIN_COUNT = 128

# --- reader scale ------------------------------------------------------------------------------
READER_SCALE = {
    1: "definitely benign",
    2: "probably benign",
    3: "possibly malignant",
    4: "probably malignant",
    5: "definitely malignant",
}

# --- output contract ---------------------------------------------------------------------------
NODES_CSV_COLUMNS = (
    "node_id", "side", "region", "dl_status", "short_axis_mm", "long_axis_mm", "volume_mm3",
    "centroid_r", "centroid_a", "centroid_s", "radiomics_score", "radiomics_probability",
    "size_positive",
)

SYNTHETIC_MODEL_NOTICE = (
    "The bundled model was trained only on synthetic pelvic phantoms generated by LLNAssist; "
    "it has never seen patient data and is not for clinical use."
)

# --- the source papers, as user-facing text cites them ---------------------------------------------------
CITE_SEGMENTATION = ("Qiao G, Feng L, Li Z, et al. Deep learning based on MRI for assessing the prognostic value "
                     "of lateral lymph nodes in rectal cancer. Front Oncol. 2025. doi:10.3389/fonc.2025.1681939")
CITE_RADIOMICS = ("Yoo J, Han JY, Chang W, et al. Predicting lateral pelvic lymph node metastasis in rectal cancer "
                  "patients using MRI radiomics: a multicenter retrospective study. Sci Rep. 2025")
METHODS_NOTE = ("Segmentation, short-axis and size/morphology criteria after Qiao et al. (Front Oncol 2025); "
                "radiomics score and reader study after Yoo et al. (Sci Rep 2025).")
