"""camkit.core.choices: one check of a named choice for the library, the Enum's own lookup."""

from __future__ import annotations

import pytest

from camkit.core.choices import Aug, CleanSplit, Engine, choice, values
from camkit.errors import CamkitError


@pytest.mark.parametrize("given", ["flip", Aug.flip])
def test_a_choice_is_its_plain_string_whether_given_as_enum_or_string(given):
    assert choice(Aug, given, "aug") == "flip" and type(choice(Aug, given, "aug")) is str


def test_a_choice_outside_the_enum_names_the_option_and_every_choice_in_order():
    with pytest.raises(CamkitError) as e:
        choice(CleanSplit, "test", "split")
    assert str(e.value) == "--split must be one of all, train, valid, not 'test'"


def _aug():
    import torch

    from camkit.data.folders import TensorBatches

    TensorBatches(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), bs=2, shuffle=False,
                  aug="lots")


def _engine():
    from camkit.crawl.engines import engine_chain

    engine_chain("altavista", None, {})


def _precision():
    import torch

    from camkit.core.device import resolve_precision

    resolve_precision("fp8", torch.device("cpu"))


def _recipe():
    from camkit.train.evidence import get_recipe

    get_recipe("magic")


@pytest.mark.parametrize("call, option", [(_aug, "aug"), (_engine, "engine"), (_precision, "precision"),
                                          (_recipe, "recipe")])
def test_library_functions_refuse_an_unknown_choice_as_the_cli_would(call, option):
    with pytest.raises(CamkitError, match=f"^--{option} must be one of .*, not '"):
        call()


def test_values_are_the_enums_strings_in_order():
    assert values(Engine)[0] == "auto" and values(CleanSplit) == ("all", "train", "valid")
