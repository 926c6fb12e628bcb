"""The same multi-task job as a user would write it with the transformers Trainer, at its best settings.

    python -m bench.trainer_script MODEL DATA OUT --epochs N [--bf16] [--seed 42]

What `bench.e2e` puts against `mtld submit`: one shared encoder, one head per
task on the first token (as mtld's heads), the demo's sentiment
(classification), topic (multilabel) and similarity (regression, a text pair)
tasks mixed in one training set; micro-batch 8, gradient accumulation 2
(effective batch 16), linear schedule with 10 % warm-up, fused AdamW,
clipping at 1.0, `group_by_length`, bf16 autocast when asked, an evaluation
at each epoch's end, and the encoder and tokenizer saved to OUT/model at the
end. Prints one JSON line: the last evaluation's metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments

SENTIMENT = ["pos", "neg", "neutral"]
TOPICS = ["sports", "tech", "food", "travel", "finance"]
TASKS = ("sentiment", "topic", "similarity")
WIDTH = 1 + 1 + len(TOPICS) + 1  # a row of labels: task, sentiment class, topics, similarity score


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def examples(tokenizer: Any, data: Path, split: str, max_length: int) -> list[dict[str, Any]]:
    """Every task's examples, tokenized, with one label row each (the task in its first column)."""
    rows = []
    for task, name in enumerate(TASKS):
        for ex in read(data / f"{name}.{split}.jsonl"):
            label = [0.0] * WIDTH
            label[0] = task
            if name == "sentiment":
                enc, label[1] = tokenizer(ex["text"], truncation=True, max_length=max_length), SENTIMENT.index(ex["label"])
            elif name == "topic":
                enc = tokenizer(ex["text"], truncation=True, max_length=max_length)
                for topic in ex["topics"]:
                    label[2 + TOPICS.index(topic)] = 1.0
            else:
                enc, label[-1] = tokenizer(ex["text_a"], ex["text_b"], truncation=True, max_length=max_length), ex["score"]
            rows.append({**enc, "labels": label})
    return rows


class MultiTask(nn.Module):
    def __init__(self, model: str):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(model, add_pooling_layer=False)
        config = self.encoder.config
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, n) for n in (len(SENTIMENT), len(TOPICS), 1))
        for head in self.heads:
            nn.init.normal_(head.weight, std=config.initializer_range)
            nn.init.zeros_(head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        first = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state[:, 0]
        logits = torch.cat([head(self.dropout(first)) for head in self.heads], dim=-1).float()
        out = {"logits": logits}
        if labels is not None:
            task = labels[:, 0].long()
            loss = logits.new_zeros(())
            for t in range(len(TASKS)):
                rows = task == t
                if not rows.any():
                    continue
                lg, lb = logits[rows], labels[rows]
                if t == 0:
                    loss = loss + nn.functional.cross_entropy(lg[:, :3], lb[:, 1].long(), reduction="sum")
                elif t == 1:
                    loss = loss + nn.functional.binary_cross_entropy_with_logits(lg[:, 3:8], lb[:, 2:7], reduction="sum") / 5
                else:
                    loss = loss + nn.functional.mse_loss(lg[:, 8], lb[:, 7], reduction="sum")
            out["loss"] = loss / len(labels)
        return out


def metrics(prediction: Any) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    task = labels[:, 0].astype(int)
    s, t, r = task == 0, task == 1, task == 2
    accuracy = float((logits[s, :3].argmax(-1) == labels[s, 1]).mean())
    guess, truth = logits[t, 3:8] > 0, labels[t, 2:7] > 0.5
    tp = float((guess & truth).sum())
    f1 = 2 * tp / max(float(guess.sum() + truth.sum()), 1.0)
    pearson = float(np.corrcoef(logits[r, 8], labels[r, 7])[0, 1])
    return {"sentiment_accuracy": accuracy, "topic_micro_f1": f1, "similarity_pearson": pearson}


def collate(tokenizer: Any):
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer, padding="longest", pad_to_multiple_of=8)

    def call(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
        batch = pad([{k: v for k, v in r.items() if k != "labels"} for r in rows])
        batch["labels"] = labels
        return batch

    return call


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer_script", description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train = examples(tokenizer, args.data, "train", args.max_length)
    evaluation = examples(tokenizer, args.data, "eval", args.max_length)
    model = MultiTask(args.model)
    training = TrainingArguments(
        output_dir=str(args.out / "trainer"), per_device_train_batch_size=8, gradient_accumulation_steps=2,
        per_device_eval_batch_size=32, num_train_epochs=args.epochs, learning_rate=5e-5, weight_decay=0.01,
        warmup_steps=0.1, lr_scheduler_type="linear", max_grad_norm=1.0, optim="adamw_torch_fused", seed=args.seed,
        train_sampling_strategy="group_by_length", eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
        report_to="none", use_cpu=True, bf16=args.bf16, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=evaluation,
                      data_collator=collate(tokenizer), compute_metrics=metrics)
    trainer.train()
    final = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]  # the last epoch's
    model.encoder.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    torch.save(model.heads.state_dict(), args.out / "model" / "heads.pt")
    trained = [entry for entry in trainer.state.log_history if "train_runtime" in entry][-1]
    print(json.dumps({**{k.removeprefix("eval_"): v for k, v in final.items()}, "train_runtime": trained["train_runtime"]}))


if __name__ == "__main__":
    main()
