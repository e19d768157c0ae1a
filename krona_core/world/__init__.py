"""A procedural text-to-image world small enough to pretrain an SD-shaped model on two CPU cores:
scenes (`scenes.py`), analytic detectors (`detect.py`), the model (`model.py`), its pretraining
(`pretrain.py`) and a personalisation task on it (`task.py`)."""
