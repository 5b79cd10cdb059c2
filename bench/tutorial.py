"""The seed tutorial's linear regression, typos fixed and nothing else changed: the baseline.

Python-list shuffle, a tensor indexed by a list per batch, autograd, manual SGD on the MAE.
Run as a script it does what the tutorial does in one process: make the data, train for 1000
epochs, draw feature 3 against y with the fitted line (to a PNG instead of a window).
"""

import random
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def create_data(w, b, data_num):
    x = torch.normal(0, 1, (data_num, len(w)))
    y = torch.matmul(x, w) + b

    noise = torch.normal(0, 0.01, y.shape)
    y += noise

    return x, y


def data_provider(data, label, batchsize):
    length = len(label)
    indices = list(range(length))
    random.shuffle(indices)

    for each in range(0, length, batchsize):
        get_indices = indices[each : each + batchsize]
        get_data = data[get_indices]
        get_label = label[get_indices]
        yield get_data, get_label  # the tutorial's yield sits one level out: a typo


def fun(x, w, b):
    pre_y = torch.matmul(x, w) + b
    return pre_y


def maeLoss(pre_y, y):  # noqa: N802 - the tutorial's name
    return torch.sum(abs(pre_y - y)) / len(y)


def sgd(paras, lr):
    with torch.no_grad():
        for para in paras:
            para -= para.grad * lr
            para.grad.zero_()


def train(X, Y, epochs=1000, lr=0.001, batchsize=16, w_0=None, b_0=None):
    """The tutorial's training loop; returns the learned w_0, b_0."""
    if w_0 is None:
        w_0 = torch.normal(0, 0.01, (X.shape[1],), requires_grad=True)
        b_0 = torch.normal(0.01, 0.01, (), requires_grad=True)
    for epoch in range(epochs):
        data_loss = 0
        for batch_x, batch_y in data_provider(X, Y, batchsize):
            pred_y = fun(batch_x, w_0, b_0)
            loss = maeLoss(pred_y, batch_y)
            loss.backward()
            sgd([w_0, b_0], lr)
            data_loss += loss
    # The tutorial prints once, after the loop: the last epoch's summed batch losses.
    print("epoch %03d: loss: %.6f" % (epoch, data_loss.item()))
    return w_0, b_0


def main(out="tutorial.png"):
    true_w = torch.tensor([8.1, 2, 2, 4])
    true_b = torch.tensor(1.1)
    X, Y = create_data(true_w, true_b, 500)
    w_0, b_0 = train(X, Y)
    idx = 3
    plt.plot(
        X[:, idx].detach().numpy(),
        X[:, idx].detach().numpy() * w_0[idx].detach().numpy() + b_0.detach().numpy(),
    )
    plt.scatter(X[:, idx], Y, 1)
    plt.savefig(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
