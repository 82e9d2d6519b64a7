"""Adam, a cosine schedule, dropout and early stopping on scikit-learn's digits.

The data set (1,797 8x8 images) ships inside scikit-learn: no download.  A
64-H-H-10 ReLU network (H = 256 by default, large enough to overfit 1,078
training images) is trained five times, adding one piece of the training
toolkit each time, and the table shows what each piece changed on a
validation and a test split:

    plain SGD -> Adam -> + cosine schedule -> + dropout -> + early stopping

    python examples/training_toolkit.py [--epochs 60] [--hidden 256] [--seed 0]

The models with dropout train layer by layer (the compiled multi-step path
takes Dense and activation layers only), so they take longer per epoch.
"""

import argparse
import time

import numpy as np

import jitprop as jp


def load_splits(seed=0):
    """Digits scaled to [0, 1]: 60% train, 20% validation, 20% test (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    Xtr, Xrest, ytr, yrest = train_test_split(X, y, test_size=0.4, random_state=seed, stratify=y)
    Xva, Xte, yva, yte = train_test_split(Xrest, yrest, test_size=0.5, random_state=seed, stratify=yrest)
    return (Xtr, ytr), (Xva, yva), (Xte, yte)


def build(seed, dropout, hidden=256):
    layers = [jp.Dense(64, hidden, seed=seed, init="he_uniform"), jp.ReLU()]
    if dropout:
        layers.append(jp.Dropout(dropout, seed=seed + 10))
    layers += [jp.Dense(hidden, hidden, seed=seed + 1, init="he_uniform"), jp.ReLU()]
    if dropout:
        layers.append(jp.Dropout(dropout, seed=seed + 11))
    layers.append(jp.Dense(hidden, 10, seed=seed + 2))
    return jp.Sequential(layers)


#: Each configuration adds one piece to the previous one.
CONFIGS = [
    ("plain SGD (lr 0.05)", dict(opt="sgd")),
    ("Adam (lr 1e-3)", dict(opt="adam")),
    ("+ cosine schedule", dict(opt="adam", cosine=True)),
    ("+ dropout 0.3", dict(opt="adam", cosine=True, dropout=0.3)),
    ("+ early stopping", dict(opt="adam", cosine=True, dropout=0.3, early=True)),
]


def run(config, data, epochs, seed, hidden=256):
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    model = build(seed, config.get("dropout"), hidden)
    opt = jp.SGD(model, lr=0.05) if config["opt"] == "sgd" else jp.Adam(model, lr=1e-3)
    trainer = jp.Trainer(model, jp.SoftmaxCrossEntropy(), opt)
    sched = jp.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-5) if config.get("cosine") else None
    early = jp.EarlyStopping("val_loss", patience=8, restore_best=True) if config.get("early") else None
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=32, seed=seed, validation_data=(Xva, yva),
                       progress=False, scheduler=sched, early_stopping=early)
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(Xte, yte)
    val = trainer.evaluate(Xva, yva)
    return {"epochs": len(hist["loss"]), "train_loss": hist["loss"][-1], "val_loss": val["loss"],
            "best_val_loss": min(hist["val_loss"]), "test_loss": test["loss"], "test_accuracy": test["accuracy"],
            "seconds": seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = load_splits(args.seed)
    print(f"digits: {len(data[0][1])} train / {len(data[1][1])} validation / {len(data[2][1])} test images, "
          f"up to {args.epochs} epochs\n")
    head = f"{'configuration':<22} {'epochs':>6} {'train loss':>10} {'val loss':>9} {'test loss':>9} " \
           f"{'test acc':>8} {'time':>6}"
    print(head)
    print("-" * len(head))
    results = {}
    for name, config in CONFIGS:
        r = run(config, data, args.epochs, args.seed, args.hidden)
        results[name] = r
        print(f"{name:<22} {r['epochs']:>6} {r['train_loss']:>10.4f} {r['val_loss']:>9.4f} {r['test_loss']:>9.4f} "
              f"{r['test_accuracy']:>8.2%} {r['seconds']:>5.1f}s")
    names = [n for n, _ in CONFIGS]
    print("\nwhat each piece contributed (change of the test loss, and of the test accuracy):")
    for prev, cur in zip(names, names[1:]):
        a, b = results[prev], results[cur]
        print(f"  {cur:<22} test loss {b['test_loss'] - a['test_loss']:+.4f}, "
              f"test accuracy {100 * (b['test_accuracy'] - a['test_accuracy']):+.2f} points"
              + (f", {a['epochs'] - b['epochs']} fewer epochs" if b["epochs"] < a["epochs"] else ""))
    return results


if __name__ == "__main__":
    main()
