"""ImageNet class names from timm and lookup by index, WordNet id or name."""

import numpy as np
import pytest

from dclsviz import labels


def test_thousand_classes_in_index_order():
    names = labels.imagenet_classes()
    assert len(names) == 1000 and all(isinstance(n, str) and n for n in names)
    assert names[0] == "tench, Tinca tinca"
    assert names[999].startswith("toilet tissue")
    # "crane" is the one description that two classes share (the bird and the machine).
    assert [i for i, n in enumerate(names) if n == "crane"] == [134, 517]
    assert len(set(names)) == 999
    wnids = labels.wordnet_ids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids == sorted(wnids)


@pytest.mark.parametrize(
    "query,index",
    [
        (0, 0),
        (np.int64(999), 999),
        ("17", 17),
        ("tench", 0),
        ("  TENCH  ", 0),
        ("Tinca tinca", 0),
        ("tench, tinca tinca", 0),
        ("n01440764", 0),
        ("great white shark", 2),
        ("man-eater", 2),
        ("tabby cat", 281),
        ("partridge", 86),  # a whole description wins over the same word as a synonym of class 82
    ],
)
def test_class_index(query, index):
    assert labels.class_index(query) == index


def test_every_description_maps_back_to_its_index():
    for i, name in enumerate(labels.imagenet_classes()):
        if name != "crane":
            assert labels.class_index(name) == i


def test_ambiguous_name_lists_the_candidates():
    with pytest.raises(ValueError, match="several classes.*134: crane; 517: crane"):
        labels.class_index("crane")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"close matches: 'tench' \(0\)"):
        labels.class_index("tenchh")
    with pytest.raises(ValueError, match="no close match"):
        labels.class_index("qqqqqqqq")


@pytest.mark.parametrize("bad", [-1, 1000, "1000", ""])
def test_out_of_range_or_empty(bad):
    with pytest.raises(ValueError):
        labels.class_index(bad)


def test_wrong_types():
    for bad in (True, 2.5, None):
        with pytest.raises(TypeError):
            labels.class_index(bad)


def test_short_name():
    assert labels.short_name(0) == "tench"
    assert labels.short_name("n01443537") == "goldfish"


def test_a_model_with_its_own_classes():
    own = ("red disc", "blue square, cube", "green star")
    assert labels.class_index("Blue Square", own) == 1
    assert labels.class_index("cube", own) == 1
    assert labels.class_index(2, own) == 2
    with pytest.raises(ValueError, match="outside 0..2"):
        labels.class_index(3, own)
    with pytest.raises(ValueError, match="close matches: 'red disc'"):
        labels.class_index("red disk", own)
    with pytest.raises(ValueError):
        labels.class_index("n01440764", own)  # WordNet ids belong to ImageNet only
    assert labels.short_name(1, own) == "blue square"


def test_class_names_for_a_zoo_entry():
    class Entry:  # the one attribute a zoo entry contributes
        def __init__(self, class_names):
            self.class_names = class_names

    assert labels.class_names_for(Entry(("a", "b"))) == ["a", "b"]
    assert labels.class_names_for(Entry(None)) == labels.imagenet_classes()
    names = labels.imagenet_classes()
    names[0] = "edited"
    assert labels.imagenet_classes()[0] == "tench, Tinca tinca"


@pytest.mark.parametrize("digits", ["٣", "３", "३", "-٣"])  # Arabic-Indic, fullwidth, Devanagari three
def test_only_ascii_digits_name_a_class_index(digits):
    with pytest.raises(ValueError, match="is not a class name of this model"):
        labels.class_index(digits)
    assert labels.class_index("3") == 3 and labels.class_index(" 3 ") == 3


def test_a_long_digit_string_is_out_of_range_not_a_big_int():
    with pytest.raises(ValueError, match=r"class index 9{13}\.\.\. is outside 0..999"):
        labels.class_index("9" * 5000)
