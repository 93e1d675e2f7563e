"""The benchmarks' networks and their work: the sweep's rows (``nnjit bench --sweep`` and the
regression gate ``nnjit bench --compare`` time the same ones) and the training FLOP of a
sample, in a module of their own so that both benchmarks read them without importing each
other."""


def train_flops(layers):
    """Multiply-adds x 2 per sample for one training step: feed-forward and corrections of
    every layer, the error recursion of every layer but the first (no delta for inputs)."""
    f = 0
    for l in range(1, len(layers)):
        wl = layers[l] * layers[l - 1]
        f += 2 * wl * (2 if l == 1 else 3)
    return f


#: nnjit bench --sweep: (layers, batch sizes), the README's performance table
SWEEP = [([64, 32, 10], [1]), ([784, 128, 10], [32, 256, 1024]),
         ([784, 512, 512, 10], [256, 1024]), ([784, 1024, 1024, 10], [32, 256, 1024])]
#: training FLOP of one timed epoch in --sweep (sets each row's sample count)
SWEEP_FLOP = 2e10
