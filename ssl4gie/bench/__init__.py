"""Benchmarks: scripts that print numbers, built from the real config and the pieces a run uses.

* ``python -m ssl4gie.bench`` -- one finetuning case on this machine: loader, training and evaluation throughput
  (:mod:`ssl4gie.bench.finetune`);
* ``python -m ssl4gie.bench.gpu`` -- the study's eight task × backbone cases on one GPU: memory, MFU, loader
  rates per worker (:mod:`ssl4gie.bench.gpu`);
* ``python -m ssl4gie.bench.pretrain`` -- self-supervised pretraining throughput per method × backbone
  (:mod:`ssl4gie.bench.pretrain`).
"""
