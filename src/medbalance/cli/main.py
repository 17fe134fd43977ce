"""Entry point of the ``medbalance`` console script. Importing a command module registers its commands on ``app``
(in this order in ``--help``): inspect, datasets make; train; generate, rebalance; evaluate; downstream;
feature-augment; train-task; benchmark; report, demo."""

from __future__ import annotations

from medbalance.cli import (  # noqa: F401
    data_cmds, train_cmds, synth_cmds, eval_cmds, downstream_cmds, feature_cmds, task_cmds, benchmark_cmds, report_cmds,
)
from medbalance.cli.app import app


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
