"""What runs leave on disk, in one place.

- `files`: the one atomic writer (and one-line errors for what cannot be written).
- `checkpoints`: saved checkpoints listed by step, and how many are kept.
- `lock`: one process per run folder.
- `log`: `log.jsonl` and TensorBoard, for pre-training and downstream runs alike.
- `overrides`: the one typed `section.key=value` parser (`tera pretrain`, `tera downstream -o`).
- `records`: the training state of a checkpoint and a downstream result, typed.
"""
