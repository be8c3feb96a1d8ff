"""Two steps of the stock SentenceTransformerTrainer with StoredGuideGISTLoss, run by tests/test_st.py under torchrun:
python tests/st_trainer_run.py WORK MODEL OUT SHORT. Each rank writes the anchor ids and the number of columns of its
batches; rank 0 the logs. SHORT: mined_dataset's (keep: its data sets, one per number of negatives, taken in turn)."""

import json
import sys

import torch.distributed as dist
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from gist_mining.st import StoredGuideGISTLoss, mined_dataset

work, model_path, out, short = sys.argv[1:]
model = SentenceTransformer(model_path, device="cpu")
loss = StoredGuideGISTLoss(model, work)
anchors = []
loss.register_forward_pre_hook(lambda module, inputs: anchors.append((inputs[1][:, 0].tolist(), len(inputs[0]))))
args = SentenceTransformerTrainingArguments(out, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                                            logging_steps=1, save_strategy="no", seed=3, disable_tqdm=True,
                                            report_to="none", batch_sampler="no_duplicates",
                                            multi_dataset_batch_sampler="round_robin",  # ranks on different data sets
                                            use_cpu=True)  # accelerate runs DDP over CPU processes only when told so
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=mined_dataset(work, 2, short),
                                     loss=loss)
loss.log_masked_fraction(trainer)
trainer.train()
with open(f"{out}/anchors-{dist.get_rank()}.json", "w") as fh:
    json.dump(anchors, fh)
if trainer.is_world_process_zero():
    with open(f"{out}/log.json", "w") as fh:
        json.dump([h for h in trainer.state.log_history if "loss" in h], fh)
