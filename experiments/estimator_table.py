"""How each advantage estimator weights correct and wrong responses, by group accuracy.

For a group of ``G`` binary rewards with ``k`` correct, prints the advantage every estimator
gives a correct and a wrong response, with rollout confidences that make the effect of
ProGRPO's ARM and LENS visible: correct responses have length-normalised probability
``pi_correct``; wrong ones spread from ``pi_wrong`` down to ``pi_wrong / 4``, and the table shows
the most confident wrong response. Writes the table as JSON.

    python experiments/estimator_table.py --group_size=8 --out=/tmp/estimators.json
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from rlvr_jax import advantages


def group_inputs(k: int, G: int, pi_correct: float, pi_wrong: float, length: int = 16):
    """Rewards ``[1, G]`` with ``k`` correct, and rollout statistics with constant log-probs."""
    rewards = np.zeros((1, G), np.float32)
    rewards[0, :k] = 1.0
    pi_wrongs = pi_wrong * np.linspace(1.0, 0.25, G - k) if k < G else np.zeros(0)
    pi = np.concatenate([np.full(k, pi_correct), pi_wrongs])
    logp = np.repeat(np.log(pi)[None, :, None], length, axis=-1).astype(np.float32)
    stats = {
        "logp": logp,
        "response_mask": np.ones_like(logp),
        "prompt_logp": np.full((1, 8), math.log(0.3), np.float32),
        "prompt_mask": np.ones((1, 8), np.float32),
        "entropy": np.full_like(logp, 1.0),  # the entropy-shaped advantage's H
    }
    return rewards, stats


def table(G: int, pi_correct: float, pi_wrong: float) -> list[dict]:
    rows = []
    for k in range(G + 1):
        rewards, stats = group_inputs(k, G, pi_correct, pi_wrong)
        row = {"k": k}
        for name, entry in advantages.ESTIMATORS.items():
            a = np.asarray(advantages.compute(name, rewards, stats), np.float64)
            a = a.mean(-1) if entry.per_token else a
            row[name] = {
                "correct": float(a[0, 0]) if k > 0 else None,
                "wrong": float(a[0, k]) if k < G else None,
            }
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    names = list(advantages.ESTIMATORS)
    header = f"{'k':>3} " + " ".join(f"{n:>24}" for n in names)
    lines = [header, " " * 4 + " ".join(f"{'correct / wrong':>24}" for _ in names)]
    for row in rows:
        cells = []
        for name in names:
            values = row[name]
            text = " / ".join("-" if v is None else f"{v:+.3f}" for v in values.values())
            cells.append(f"{text:>24}")
        lines.append(f"{row['k']:>3} " + " ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--pi_correct", type=float, default=0.6)
    parser.add_argument("--pi_wrong", type=float, default=0.4)
    parser.add_argument("--out", default="estimator_table.json")
    args = parser.parse_args()
    rows = table(args.group_size, args.pi_correct, args.pi_wrong)
    print(format_table(rows))
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
