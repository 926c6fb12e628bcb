"""`mtld predict`: a trained model folder + input rows → one JSON line of predictions per row.

Each output line is {"line": <input line>, "predictions": {task: value}}, the
value being a label (classification), a list of labels (multilabel), a score
(regression) or one tag per word (token classification); null when the row
lacks the task's input fields. Input rows use the same fields as the training
data (JSONL or CSV); a token task accepts a list of words or a string, split
on whitespace.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

from mtld.config.taskrows import DataError, read_rows
from mtld.disk import write_atomic
from mtld.train.errors import BadInput, missing_package_message
from mtld.train.layout import HEADS_FILE, TASKS_FILE


def resolve_model_dir(path: Path) -> Path:
    """A model folder as given, or a run directory's best model (best/), else its final one (model/)."""
    path = Path(path)
    if (path / TASKS_FILE).is_file():
        return path
    for name in ("best", "model"):
        if (path / name / TASKS_FILE).is_file():
            return path / name
    raise BadInput(f"{path} holds no trained model (no {TASKS_FILE} in it, in best/ or in model/)")


def predict(model_dir: Path, input_path: Path, output_path: Path, *, device: str = "auto", batch_size: int = 32) -> int:
    """Write predictions for every row of `input_path` to `output_path` (JSONL); returns rows written.

    Raises BadInput when the model folder or the input cannot be used.
    """
    from mtld.train.data import encode_inputs, pad_split
    from mtld.train.device import pick_device
    from mtld.train.inference import infer_split
    from mtld.train.model import load_model, quiet_transformers

    quiet_transformers()
    folder = resolve_model_dir(model_dir)
    torch_device = pick_device(device)
    check_heads(folder / HEADS_FILE)
    try:
        model, tokenizer, tasks, max_length = load_model(folder, torch_device)
    except ImportError as e:
        raise BadInput(missing_package_message(e, f"the model in {folder}")) from None
    except pickle.UnpicklingError:  # a weights file (pytorch_model.bin) that weights_only=True refused
        raise BadInput(f"{folder}: its weights are not a file mtld wrote (they hold more than tensors, so they were "
                       "not loaded: mtld never unpickles a file it did not write)") from None
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the model in {folder}: {type(e).__name__}: {e}") from None
    try:
        rows = list(read_rows(Path(input_path)))
    except DataError as e:
        raise BadInput(str(e)) from None
    except OSError as e:
        raise BadInput(f"cannot read {input_path}: {e.strerror or e}") from None
    predictions: list[dict[str, Any]] = [{t.name: None for t in tasks} for _ in rows]
    for index, info in enumerate(tasks):
        usable = [i for i, (_, row) in enumerate(rows) if _has_inputs(row, info)]
        if not usable:
            continue
        texts = [_text(rows[i][1][info.text_field], info.is_token_task) for i in usable]
        pairs = [str(rows[i][1][info.text_pair_field]) for i in usable] if info.text_pair_field else None
        split = pad_split(encode_inputs(info, tokenizer, texts, pairs, max_length), tokenizer.pad_token_id or 0)
        split.to(torch_device)
        values = infer_split(model, index, info, split, batch_size=batch_size)
        for i, value in zip(usable, values):
            predictions[i][info.name] = _readable(info, value)
    lines = [json.dumps({"line": line, "predictions": p}, ensure_ascii=False) for (line, _), p in zip(rows, predictions)]
    write_atomic(Path(output_path), "".join(line + "\n" for line in lines).encode("utf-8"))
    return len(lines)


def check_heads(path: Path) -> None:
    """BadInput unless `path` loads as tensors alone. torch.load(weights_only=True) raises UnpicklingError for
    anything else, with a message that advises loading it with weights_only=False (torch/serialization.py,
    _get_wo_message): that advice is never passed on, since it would run whatever the file holds."""
    import torch

    try:
        with warnings.catch_warnings():  # about the pickle protocol of a file it then refuses: not news to a user
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInput(f"{path}: not found (the model folder is incomplete)") from None
    except pickle.UnpicklingError:
        raise BadInput(f"{path}: not a file mtld wrote (it holds more than tensors, so it was not loaded: mtld "
                       "never unpickles a file it did not write)") from None
    except (RuntimeError, EOFError, OSError) as e:  # a zip archive cut short, an empty file
        raise BadInput(f"{path}: cannot be read, it is damaged ({type(e).__name__})") from None


def _has_inputs(row: dict[str, Any], info: Any) -> bool:
    fields = [info.text_field] + ([info.text_pair_field] if info.text_pair_field else [])
    return all(row.get(f) not in (None, "", []) for f in fields)


def _text(value: Any, words: bool) -> Any:
    if not words:
        return str(value)
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else value.split()
    return [str(w) for w in value]


def _readable(info: Any, value: Any) -> Any:
    if info.type == "classification":
        return info.labels[int(value)]
    if info.type == "multilabel":
        return [name for name, on in zip(info.labels, value) if on]
    if info.type == "regression":
        return float(value)
    return list(value)


