"""How separable split-wordnet-glosses' 60 classes are for the frozen all-MiniLM-L6-v2 (no class-incremental
protocol: all classes at once): a logistic regression on the mean-pooled embeddings, the nearest class mean,
and the zero-shot match against the class-name embeddings, on the benchmark's own train/test split.

    .venv/bin/python bench/wordnet_separability.py --train-per-class 40 --test-per-class 20 --max-tokens 64
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression

    from lifelong.adapters.lm.text_backbone import load_text_backbone
    from lifelong.benchmarks.split_wordnet_glosses import SplitWordNetGlossesConfig, labelled_texts, split_per_class

    torch.set_num_threads(1)
    t0 = time.time()
    cfg = SplitWordNetGlossesConfig(train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                                    seed=args.seed)
    texts, names = labelled_texts(cfg)
    parts = split_per_class(texts, cfg)
    enc = load_text_backbone("minilm", max_tokens=args.max_tokens).visual

    def embed(rows: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([F.normalize(enc(rows[i:i + 64]), dim=-1) for i in range(0, len(rows), 64)])

    x_train, x_test = embed(parts["train"][0]), embed(parts["test"][0])
    y_train, y_test = np.array(parts["train"][1]), np.array(parts["test"][1])
    clf = LogisticRegression(C=10, max_iter=2000).fit(x_train.numpy(), y_train)
    protos = F.normalize(torch.stack([x_train[torch.from_numpy(y_train == c)].mean(0) for c in range(len(names))]), dim=-1)
    print(f"split-wordnet-glosses, {len(names)} classes, {len(y_train)} train / {len(y_test)} test texts, seed "
          f"{args.seed}, frozen MiniLM, max {args.max_tokens} tokens ({time.time() - t0:.0f} s)")
    print(f"logistic regression on embeddings: {100 * (clf.predict(x_test.numpy()) == y_test).mean():.1f} %")
    print(f"nearest class mean:                {100 * ((x_test @ protos.T).argmax(1).numpy() == y_test).mean():.1f} %")
    for template in ("{}", "a kind of {}."):
        t = enc.class_embeddings(names, [template])
        print(f"zero-shot {template!r:>16}:        {100 * ((x_test @ t.T).argmax(1).numpy() == y_test).mean():.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
