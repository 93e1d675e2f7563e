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
    if val:
        # validation may have been recorded for the latest epochs only (a later fit added it)
        ax.plot(range(len(loss) - len(val) + 1, len(loss) + 1), val, label="validation loss", color="C1")
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
        ax2.plot(range(len(loss) - len(score) + 1, len(loss) + 1), score, label="validation score",
                 color="C2", linestyle="--")
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
