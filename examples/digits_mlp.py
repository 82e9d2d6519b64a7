"""Train a 64-64-10 ReLU network on scikit-learn's handwritten digits.

The data set (1,797 8x8 images) ships inside scikit-learn: no download
(jitprop.datasets reads its file without importing scikit-learn).  Prints
the loss per epoch, test accuracy and training throughput.

    python examples/digits_mlp.py [--epochs 40] [--batch-size 32] [--lr 0.05]
"""

import argparse
import time

import jitprop as jp
from jitprop.datasets import digits_split


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    Xtr, Xte, ytr, yte = digits_split(args.seed)  # stratified 75/25

    def build():
        model = jp.Sequential([
            jp.Dense(64, args.hidden, seed=args.seed), jp.ReLU(),
            jp.Dense(args.hidden, 10, seed=args.seed + 1),
        ])
        return jp.Trainer(model, jp.SoftmaxCrossEntropy(), jp.SGD(model, lr=args.lr, momentum=args.momentum))

    # Compile the kernels (or load them from Numba's on-disk cache) on a
    # throwaway copy, so the timings below are training alone.
    t0 = time.perf_counter()
    warm = build()
    warm.fit(Xtr[:2 * args.batch_size], ytr[:2 * args.batch_size], epochs=1, batch_size=args.batch_size,
             validation_data=(Xte[:8], yte[:8]), progress=False)
    compile_s = time.perf_counter() - t0

    trainer = build()
    hist = trainer.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       validation_data=(Xte, yte), progress=not args.no_progress)
    print("epoch  train_loss  test_loss  test_acc")
    for e in range(args.epochs):
        if e < 3 or e == args.epochs - 1 or (e + 1) % 5 == 0:
            print(f"{e + 1:5d}  {hist['loss'][e]:10.4f}  {hist['val_loss'][e]:9.4f}  {hist['val_accuracy'][e]:8.4f}")
    ev = trainer.evaluate(Xte, yte)
    total_samples = args.epochs * len(Xtr)
    total_time = sum(hist["time"])
    print(f"test accuracy: {ev['accuracy']:.4f} on {len(Xte)} held-out images")
    print(f"training throughput: {total_samples / total_time:,.0f} samples/s "
          f"({args.epochs} epochs in {total_time:.2f} s; compiling or loading the kernels took {compile_s:.2f} s before)")
    return ev["accuracy"]


if __name__ == "__main__":
    main()
