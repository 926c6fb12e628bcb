"""What a saved model folder (a run's model/ or best/) holds, besides the encoder and tokenizer files.

Torch-free, so `mtld predict` can find a model folder before loading anything heavy.
"""

HEADS_FILE = "heads.pt"  # the task heads' state dict (tensors only: loads with weights_only=True)
TASKS_FILE = "tasks.json"  # format, max_length, tasks (name, type, labels, fields, weight), the job spec
MODEL_FORMAT = 1
