"""The Florence-2 task tokens, and which label rows feed each task.

The vocabulary that the configuration (``model.tasks``, ``task_weights``), the training corpus
(``models.tasks``) and the exports share; the serialisation of each task is
``models.tasks``.
"""

CAPTION = "<CAPTION>"
DETAILED_CAPTION = "<DETAILED_CAPTION>"
MORE_DETAILED_CAPTION = "<MORE_DETAILED_CAPTION>"
OD = "<OD>"
DENSE_REGION_CAPTION = "<DENSE_REGION_CAPTION>"
REGION_PROPOSAL = "<REGION_PROPOSAL>"
CAPTION_TO_PHRASE_GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"
REFERRING_EXPRESSION_SEGMENTATION = "<REFERRING_EXPRESSION_SEGMENTATION>"
REGION_TO_SEGMENTATION = "<REGION_TO_SEGMENTATION>"
OPEN_VOCABULARY_DETECTION = "<OPEN_VOCABULARY_DETECTION>"
REGION_TO_CATEGORY = "<REGION_TO_CATEGORY>"
REGION_TO_DESCRIPTION = "<REGION_TO_DESCRIPTION>"
OCR = "<OCR>"
OCR_WITH_REGION = "<OCR_WITH_REGION>"

# which label rows (their ``task`` column) feed each Florence-2 task; alt_text feeds none:
# web alt-text is noisy and is only the raw material of the captions the engine writes
TASK_SOURCES: dict[str, tuple[str, ...]] = {
    CAPTION: ("brief_caption",),
    DETAILED_CAPTION: ("detailed_caption",),
    MORE_DETAILED_CAPTION: ("more_detailed_caption",),
    OD: ("object",),
    DENSE_REGION_CAPTION: ("region_caption",),
    REGION_PROPOSAL: ("object",),
    CAPTION_TO_PHRASE_GROUNDING: ("phrase_grounding",),
    REFERRING_EXPRESSION_SEGMENTATION: ("region_caption", "object"),
    REGION_TO_SEGMENTATION: ("object", "region_caption"),
    OPEN_VOCABULARY_DETECTION: ("object",),
    REGION_TO_CATEGORY: ("object",),
    REGION_TO_DESCRIPTION: ("region_caption",),
    OCR: ("ocr",),
    OCR_WITH_REGION: ("ocr",),
}
TASK_TOKENS = tuple(TASK_SOURCES)
