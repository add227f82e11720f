"""What a run shows people: the model table, the live progress line, TensorBoard files and figures.

Nothing here computes results; training and inference hand their numbers and images to it.
"""
