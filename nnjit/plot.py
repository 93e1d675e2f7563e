"""Training plots with matplotlib (the ``plot`` extra); nnjit's core never imports it.

What it is for: a quick look at how training went (``loss_curve``), in a notebook or written
to a file by ``nnjit train --plot out.png``. Not a plotting library.
"""


def _history(obj):
    if isinstance(obj, dict):
        return obj
    net = getattr(obj, "net_", obj)          # an nnjit.sklearn estimator wraps its MLP in net_
    history = getattr(net, "history_", None)
    if not isinstance(history, dict):
        raise TypeError(f"loss_curve needs an nnjit MLP, an nnjit.sklearn estimator or a history "
                        f"dict, got {type(obj).__name__}")
    return history


def _val_epochs(history, n_loss, n_val):
    """1-based epochs of the validation entries: from history["val_epoch"] (epochs without
    validation data leave gaps, drawn as breaks in the line); histories without it (an old
    dict) are taken to have validated the latest epochs."""
    import numpy as np
    epochs = history.get("val_epoch")
    if epochs is not None and len(epochs) == n_val:
        return np.asarray(epochs, dtype=float) + 1
    return np.arange(n_loss - n_val + 1, n_loss + 1, dtype=float)


def _with_gaps(x, v):
    """Insert NaN between entries whose epochs are not consecutive, so lines break there."""
    import numpy as np
    x, v = np.asarray(x, float), np.asarray(v, float)
    if len(x) < 2:
        return x, v
    cut = np.nonzero(np.diff(x) > 1)[0] + 1
    return np.insert(x, cut, np.nan), np.insert(v, cut, np.nan)


def loss_curve(net, ax=None, log=False):
    """Plot training loss (and validation loss and score, when recorded) per epoch.

    net: an MLP, a fitted nnjit.sklearn estimator, or a ``history_`` dict. ax: the matplotlib
    Axes to draw on (default: a new figure via pyplot). log: logarithmic loss axis. The
    validation score goes on a second y axis. Returns ax.
    """
    history = _history(net)
    loss = list(history.get("loss", []))
    if not loss:
        raise ValueError("nothing to plot: the model has not been trained yet (history_ is empty)")
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nnjit.plot needs matplotlib: pip install 'nnjit[plot]'") from e
    if ax is None:
        import matplotlib.pyplot as plt
        ax = plt.subplots(figsize=(6, 4))[1]
    epochs = range(1, len(loss) + 1)
    ax.plot(epochs, loss, label="training loss", color="C0")
    val = list(history.get("val_loss", []))
    val_x = _val_epochs(history, len(loss), len(val))
    if val:
        ax.plot(*_with_gaps(val_x, val), label="validation loss", color="C1",
                marker="." if len(val) < 50 else None)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    lines, labels = ax.get_legend_handles_labels()
    score = list(history.get("val_score", []))
    if score:
        ax2 = ax.twinx()
        ax2.plot(*_with_gaps(_val_epochs(history, len(loss), len(score)), score), label="validation score",
                 color="C2", linestyle="--", marker="." if len(score) < 50 else None)
        ax2.set_ylabel("validation score")
        more = ax2.get_legend_handles_labels()
        ax2.legend(lines + more[0], labels + more[1], loc="center right")   # on top of both axes
    else:
        ax.legend(lines, labels, loc="best")
    ax.set_title("nnjit training")
    return ax


def save_loss_curve(net, path, log=False):
    """Write loss_curve(net) to an image file (format from the suffix), without pyplot."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4), layout="tight")
    loss_curve(net, fig.add_subplot(), log=log)
    fig.savefig(path)
    return path
