"""Baselines every prompt-learning paper reports (seed 004): the linear probe on frozen CLIP
image features (:mod:`clapkit.baselines.probe`); zero-shot CLIP is ``clapkit eval`` on a recipe
with no trainable stage."""
