"""The RTS face-recognition OOD model: network, weights, preprocessing, trust rules.

Pure torch/numpy: no Celery, no storage I/O beyond loading a checkpoint's bytes.
"""
