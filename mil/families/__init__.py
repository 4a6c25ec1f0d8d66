"""Model families behind one registry (as timm's models): each family is one module that registers itself.

`get_family(name)` returns the `ModelFamily` saved as `family` in a config.json: how to build its module, load a
model folder's weights, warm-start from another folder, read a cache for training and predict a batch of bags.
`build_model(config)`, `load_model(folder)` and `model_config_from_dict(data)` work for every registered family.
Importing this package registers the families below; `_registry` and `_factory` import none of them.
"""

from mil.families import crop, dense  # noqa: F401  (importing the modules registers the families)
from mil.families._factory import build_model, load_model, model_config_from_dict
from mil.families._registry import ModelFamily, TrainingData, family_names, get_family, register_family

__all__ = ["ModelFamily", "TrainingData", "build_model", "family_names", "get_family", "load_model",
           "model_config_from_dict", "register_family"]
