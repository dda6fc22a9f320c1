"""The model zoo: importing this registers every family."""
from flaxbert.models import (albert, bert, deberta, distilbert, electra,  # noqa: F401 (registers)
                             mobilebert, roberta, xlnet)
from flaxbert.models.registry import (FAMILIES, create_model, family_of, get_config,  # noqa: F401
                                      list_models)
