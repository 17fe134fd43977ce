"""Entry point of the ``medbalance`` console script."""

from __future__ import annotations

import importlib

from medbalance.cli.app import app

# Every command module registers its commands on ``app`` when imported.
COMMAND_MODULES = [
    "medbalance.cli.data_cmds",  # inspect, datasets make
    "medbalance.cli.train_cmds",  # train
    "medbalance.cli.synth_cmds",  # generate, rebalance
    "medbalance.cli.eval_cmds",  # evaluate
    "medbalance.cli.downstream_cmds",  # downstream
    "medbalance.cli.feature_cmds",  # feature-augment
    "medbalance.cli.task_cmds",  # train-task
    "medbalance.cli.benchmark_cmds",  # benchmark
    "medbalance.cli.report_cmds",  # report, demo
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
