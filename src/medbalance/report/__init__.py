"""The HTML report of an experiment folder (:func:`build_report`): ``discover`` (what a folder holds), ``verdicts``
(numbers into words and colours), ``figures`` (PNG figures), ``html`` (the sections, the leaderboard among them)."""

from medbalance.report.discover import Results, discover, load_results
from medbalance.report.html import build_report, downstream_table
from medbalance.report.verdicts import make_verdicts

__all__ = ["Results", "build_report", "discover", "downstream_table", "load_results", "make_verdicts"]
