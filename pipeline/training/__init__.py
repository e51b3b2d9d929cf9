"""Training a network, as the pretrain and finetune stages do: the loop, its recipe from timm, resume state,
clean stops, the processes of a distributed run and its launcher (``python -m pipeline.training.launch``)."""
