"""Ontology parsing and class assignment: the dataset class comes from the ontology, not the phrase."""

import pytest
import torch

from grounded.core.detections import Detections
from grounded.core.ontology import Ontology, OntologyError
from grounded.core.prompts import Prompt


def test_plain_list_and_per_class_prompts():
    assert Ontology.parse("person, dog , bicycle").names == ("person", "dog", "bicycle")
    assert Ontology.parse("person, dog").prompt() == Prompt(("person", "dog"))
    onto = Ontology.parse("car: automobile, sedan;  person\n dog: puppy, Puppy")
    assert onto.names == ("car", "person", "dog")
    assert [c.prompts for c in onto.classes] == [("automobile", "sedan"), ("person",), ("puppy",)]
    assert onto.prompt().classes == ("automobile", "sedan", "person", "puppy")
    assert Ontology.parse(onto.to_spec()) == onto


def test_file_form(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("car: automobile, sedan\n# comment\nperson\n")
    onto = Ontology.load(str(path))
    assert onto.names == ("car", "person") and onto.classes[1].prompts == ("person",)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty ontology"), ("dog, dog", "given twice"), ("a: x; b: x", "both"), ("a: x.y", "'.'")],
)
def test_bad_ontologies(text, message):
    with pytest.raises(OntologyError, match=message):
        Ontology.parse(text)


def test_assign_maps_prompt_classes_to_ontology_ids():
    onto = Ontology.parse("car: automobile, sedan; person: man, woman")
    det = Detections(
        boxes=torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 4, 4]], dtype=torch.float32),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        class_ids=torch.tensor([3, 0, 1, 2]),  # woman, automobile, sedan, man
        classes=onto.prompt().classes,
        phrases=("woman", "automobile", "sedan", "man"),
        image_size=(8, 8),
    )
    out = onto.assign(det)
    assert out.classes == ("car", "person")
    assert out.class_ids.tolist() == [1, 0, 0, 1]
    assert out.class_names == ["person", "car", "car", "person"]
    assert out.phrases == det.phrases  # what the detector matched stays available
    other = Detections.empty((8, 8), classes=("boat",))
    with pytest.raises(OntologyError, match="boat"):
        onto.assign(other)
