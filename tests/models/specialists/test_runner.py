"""The runner keeps a shard going when a specialist fails on some images, and loses nothing."""

from pathlib import Path

import pytest

from models.specialists.base import ImageRef, Specialist
from models.specialists.runner import run_specialist
from relabel.labels import check_schema

IMAGES = [ImageRef(f"{i:064x}", Path(f"/img/{i}.png"), 100, 80) for i in range(7)]


class Boxer:
    """Puts one box on every image; fails on the images it is told to, in the ways it is told to."""

    name, version, annotation_types = "boxer", "1", ("region_text",)

    def __init__(self, crash_on=(), malformed_on=(), outside_on=()):
        self.crash_on, self.malformed_on, self.outside_on = set(crash_on), set(malformed_on), set(outside_on)
        self.calls = []

    def annotate(self, images, known):
        self.calls.append(len(images))
        out = []
        for image in images:
            if image.image_id in self.crash_on:
                raise RuntimeError("decoder exploded")
            box = [10.0, 10.0, 50.0, 40.0]
            if image.image_id in self.outside_on:
                box = [10.0, 10.0, 500.0, 40.0]
            row = {
                "annotation_type": "region_text",
                "task": "object",
                "region_kind": "object",
                "box": box,
                "category": "ball",
                "text": "ball",
                "score": 0.9,
            }
            if image.image_id in self.malformed_on:
                row["task"] = "not-a-task"
            out.append([row])
        return out


def test_a_healthy_specialist_labels_every_image_in_batches():
    specialist = Boxer()
    assert isinstance(specialist, Specialist)
    run = run_specialist(specialist, IMAGES, batch_size=3, progress=False)
    assert specialist.calls == [3, 3, 1]
    check_schema(run.labels, "labels")
    assert run.labels.height == 7 and run.quarantine.is_empty()
    assert set(run.labels["source"]) == {"boxer@1"}
    assert run.labels["label_id"].n_unique() == 7


def test_one_failing_image_is_quarantined_and_the_rest_of_the_shard_goes_on():
    bad, malformed, outside = IMAGES[1].image_id, IMAGES[4].image_id, IMAGES[6].image_id
    run = run_specialist(
        Boxer(crash_on=[bad], malformed_on=[malformed], outside_on=[outside]),
        IMAGES,
        batch_size=3,
        progress=False,
    )
    reasons = dict(zip(run.quarantine["image_id"], run.quarantine["reason"], strict=True))
    assert reasons == {bad: "specialist_failed", malformed: "malformed_output", outside: "box_outside_image"}
    assert "decoder exploded" in run.quarantine.filter(run.quarantine["image_id"] == bad)["detail"][0]
    # every image is accounted for: labelled, or quarantined with its reason
    assert set(run.labels["image_id"]) | set(reasons) == {i.image_id for i in IMAGES}
    assert run.labels.height + run.quarantine.height == len(IMAGES)
    assert run.images_failed == 2


def test_a_specialist_returning_the_wrong_number_of_outputs_is_caught():
    class Short(Boxer):
        def annotate(self, images, known):
            return (
                super().annotate(images, known)[:-1] if len(images) > 1 else super().annotate(images, known)
            )

    run = run_specialist(Short(), IMAGES[:4], batch_size=4, progress=False)
    assert run.labels.height == 4, "retried one by one, every image is labelled"


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_known_labels_reach_only_their_own_images(batch_size):
    from relabel.labels import frame

    known = frame(
        "labels",
        [
            {
                "label_id": f"k{i}",
                "image_id": image.image_id,
                "annotation_type": "text",
                "task": "brief_caption",
                "text": f"caption {i}",
                "source": "human",
                "iteration": 0,
                "status": "raw",
            }
            for i, image in enumerate(IMAGES)
        ],
    )
    seen = {}

    class Reader(Boxer):
        def annotate(self, images, known_for_batch):
            assert set(known_for_batch["image_id"]) == {i.image_id for i in images}
            seen.update(dict(zip(known_for_batch["image_id"], known_for_batch["text"], strict=True)))
            return [[] for _ in images]

    run_specialist(Reader(), IMAGES, known, batch_size=batch_size, progress=False)
    assert len(seen) == len(IMAGES)
