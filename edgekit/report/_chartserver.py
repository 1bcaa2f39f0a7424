"""Imported first, and only, by the chart workers' server (edgekit.report.chartpool), before
matplotlib, to set the server's own rules, which the workers it forks inherit:

- Ctrl-C goes to the whole terminal's process group, and the report, not the server,
  handles it (a Ctrl-C during the server's imports printed its traceback);
- the server lets go of the command's stdout and stderr: a program that reads the command's
  output through a pipe waits until every holder of its end has closed it, and a report
  that stopped early (a bad --store, Ctrl-C) left the server importing for a second more.
  A chart's error comes back to the command with its result, not on stderr.
- the cycle collector is off while the server imports (a tenth of matplotlib's import went
  to collections that found nothing: what an import makes lives as long as the server);
  each worker freezes what it inherits and collects its own objects
  (chartpool.worker_started).
"""

import gc
import os
import signal
import warnings

gc.disable()

signal.signal(signal.SIGINT, signal.SIG_IGN)

_null = os.open(os.devnull, os.O_WRONLY)
for _fd in (1, 2):
    os.dup2(_null, _fd)
os.close(_null)

# A worker runs the program's main module again (multiprocessing's rule for the processes it
# starts), here after the server imported it under its own name (`python -m edgekit.cli.main`):
# runpy warns that it runs a module that is imported already, which is what is meant here.
warnings.filterwarnings("ignore", message=r".* found in sys\.modules after import of package", category=RuntimeWarning)
