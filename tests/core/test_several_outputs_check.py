"""A two-head model whose first output is not the classifier: the class-count refusal says which output was
scored (a tuple's first item, a dict's first entry when it has no 'logits') and how to fix the model."""

import pytest
import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.core.model_check import check_model_on_data


class TwoHead(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.aux = nn.Linear(6, 7)
        self.cls = nn.Linear(6, 4)

    def forward(self, x):
        aux, logits = self.aux(x), self.cls(x)
        if self.kind == "tuple":
            return aux, logits
        if self.kind == "dict":
            return {"aux": aux, "scores": logits}
        return {"aux": aux, "logits": logits}


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("tuple", "the model returns 2 outputs and the first one is scored as class scores"),
        ("dict", "a dict without 'logits', so its first entry 'aux' is scored"),
    ],
)
def test_refusal_names_the_scored_output(kind, needle):
    with pytest.raises(
        ConfigError, match="gives 7 class scores per sample but the data has 4 classes"
    ) as info:
        check_model_on_data(TwoHead(kind), torch.randn(1, 6), num_classes=4, model_name="net")
    assert needle in str(info.value)


def test_dict_with_logits_is_scored_by_its_logits():
    check_model_on_data(TwoHead("logits"), torch.randn(1, 6), num_classes=4, model_name="net")  # no error
    with pytest.raises(ConfigError) as info:
        check_model_on_data(TwoHead("logits"), torch.randn(1, 6), num_classes=5, model_name="net")
    assert "gives 4 class scores" in str(info.value) and "first" not in str(info.value)
