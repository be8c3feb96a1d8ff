"""The Python API: each stage as a function over typed settings, the same code the command lines run.

    from gist_mining.api import EmbedOptions, MiningRules, ModelSettings, Prompts, TrainConfig, embed, mask, train

    embed(["pairs.parquet"], "runs/mine", ModelSettings("BAAI/bge-base-en-v1.5"), EmbedOptions(dtype="float16"),
          Prompts(query_prompt="Represent this sentence for searching relevant passages: "))
    mask("runs/mine", rules=MiningRules(margin=0.1, num_negatives=5))
    train("runs/mine", "models/mine", TrainConfig(max_steps=500, negatives_per_anchor=3))
    evaluate({"base": "all-MiniLM-L6-v2", "trained": "models/mine"},
             [RetrievalFolder("data/sample/test"), NanoBEIR(["scifact"]), MTEB(["SciFact"])], "runs/eval")

A settings field's default and help are those of its command-line option (``gist_mining.settings.option``):
``python -m pipeline.embed --help`` documents ``EmbedOptions``, and so on.
"""

from gist_mining.embed import EmbedOptions, embed
from gist_mining.evaluation import MTEB, ModelOptions, NanoBEIR, RetrievalFolder, evaluate
from gist_mining.executor import ExecutorSettings
from gist_mining.export import to_dataset
from gist_mining.mask import SearchSettings, mask
from gist_mining.mining import MiningRules
from gist_mining.models import ModelSettings, Prompts
from gist_mining.rescore import RescoreSettings
from gist_mining.training import TrainConfig, train

__all__ = ["embed", "mask", "train", "to_dataset", "evaluate", "EmbedOptions", "SearchSettings", "MiningRules",
           "RescoreSettings", "TrainConfig", "ModelSettings", "Prompts", "ExecutorSettings", "RetrievalFolder", "NanoBEIR",
           "MTEB", "ModelOptions"]
