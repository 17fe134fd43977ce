"""The HTML report of an experiment folder: :func:`build_report`.

- :mod:`~medbalance.report.discover`: what a folder contains, read through the toolkit's loaders;
- :mod:`~medbalance.report.verdicts`: numbers into words and colours;
- :mod:`~medbalance.report.figures`: matplotlib figures and image grids (PNG bytes);
- :mod:`~medbalance.report.leaderboard`: the benchmark leaderboard's tables;
- :mod:`~medbalance.report.html`: HTML assembly, one function per section, :func:`build_report`.
"""

from medbalance.report.discover import Results, discover, load_results
from medbalance.report.html import build_report, downstream_table
from medbalance.report.verdicts import make_verdicts

__all__ = ["Results", "build_report", "discover", "downstream_table", "load_results", "make_verdicts"]
