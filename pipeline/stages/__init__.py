"""One module per DVC stage, named as its stage in dvc.yaml (``python -m pipeline.stages.<stage>``). Stages never
import each other: they talk through the files dvc.yaml declares."""
