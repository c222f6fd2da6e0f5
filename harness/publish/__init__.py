"""`d2o-bench publish LEADERBOARD... --to DIR [--studies DIR] [--against METHOD] [--readme FILE]`:
tables, a static page and plots.

The package, one job per module:

- `pooling`: entries grouped per preset × method (× hyperparameters), each metric's value and 95%
  interval on `harness.stats` (tasks as clusters, runs pooled per task, worlds as units), paired
  differences between methods on the same prompts;
- `notes`: the text beside every table (interval notes, instrument checks, refusal-rule bias);
- `studies`: tuning studies (read by `harness.selection.parse_study`, the one study reader) and the
  helpfulness-at-matched-harm table;
- `tables`: Markdown and CSV, in tables narrow enough for a laptop screen;
- `plots`: trade-off, loss and frontier plots, legends outside the axes, frontiers as small multiples;
- `page`: the HTML page from one template, its style and script as static files beside it;
- `readme`: a preset's README.md with findings rendered from a template whose numbers are
  references into the board;
- `files`: atomic file writing; `cli`: `publish()` and the command line.
"""

from harness.publish.cli import publish, publish_main
from harness.publish.plots import plot_frontier, plot_loss_curves, plot_tradeoff
from harness.publish.pooling import (PAPER_CITATION, PAPER_TABLE1, aggregate, capability_metrics, judge_metrics,
                                     load_entries, summarise)
from harness.publish.studies import load_studies
from harness.publish.tables import render_csv, render_markdown

__all__ = ["PAPER_CITATION", "PAPER_TABLE1", "aggregate", "capability_metrics", "judge_metrics", "load_entries",
           "load_studies", "plot_frontier", "plot_loss_curves", "plot_tradeoff", "publish", "publish_main",
           "render_csv", "render_markdown", "summarise"]
