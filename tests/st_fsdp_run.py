"""Three steps of the stock SentenceTransformerTrainer with StoredGuideGISTLoss, under accelerate's FSDP2
(TrainingArguments fsdp/fsdp_config) or plain DDP, run by tests/test_st_fsdp.py under torchrun with gloo on CPU:
python tests/st_fsdp_run.py WORK MODEL OUT SHARDING [BATCH] (SHARDING: full_shard or ddp; BATCH: anchors per process,
4). Rank 0 writes the logs and the trained model (OUT/model); each rank writes its peak resident memory (VmHWM, MiB)
and how many parameter values it holds. benchmarks/fsdp_memory.py runs it too.

What FSDP2 needs beside the arguments (accelerate 1.16, sentence-transformers 6.3, docs/scale.md "Large students"):
the model without its Normalize module (accelerate takes it for the final norm and shards it, which fails; the loss
normalizes anyway), and the trained weights gathered and saved here (the trainer's save_model saves the sharded
parameters, which fails). On CPU only: accelerate honours the FSDP plugin for GPU-like devices only, so the state is
configured here as a GPU run's would be and handed to the trainer (use_configured_state)."""

import json
import sys

import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from benchmarks.peak_rss import status_mib
from gist_mining.st import StoredGuideGISTLoss, mined_dataset

work, model_path, out, sharding, *batch = sys.argv[1:]
fsdp = {}
if sharding == "full_shard":
    PartialState(cpu=True).distributed_type = DistributedType.MULTI_GPU  # CPU only: see above
    fsdp = {"fsdp": "full_shard", "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]},
            "accelerator_config": {"use_configured_state": True}}
model = SentenceTransformer(model_path, device="cpu")
del model[2]  # Normalize (in both runs, so that they compare)
loss = StoredGuideGISTLoss(model, work)
args = SentenceTransformerTrainingArguments(out, max_steps=3, per_device_train_batch_size=int(*batch or [4]),
                                            learning_rate=1e-3,
                                            logging_steps=1, save_strategy="no", seed=3, disable_tqdm=True,
                                            report_to="none", batch_sampler="no_duplicates", use_cpu=True, **fsdp)
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=mined_dataset(work, 2, "drop"), loss=loss)
trainer.train()
held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.model.parameters())
state = trainer.accelerator.get_state_dict(trainer.model)  # every rank: gathers the shards to rank 0
if trainer.is_world_process_zero():
    trained = SentenceTransformer(model_path, device="cpu")  # unsharded, with its Normalize
    trained.load_state_dict(state)
    trained.save(f"{out}/model")
    with open(f"{out}/log.json", "w") as fh:
        json.dump([h for h in trainer.state.log_history if "loss" in h], fh)
with open(f"{out}/rank-{dist.get_rank()}.json", "w") as fh:
    json.dump({"peak_rss_mib": status_mib(), "held": held}, fh)
