"""normwatch: an exact, live account of scale-invariant weights under weight decay and normalisation.

>>> watch = normwatch.attach(model, optimizer, logdir="runs/exp1")   # then train as usual
>>> watch.close()
"""

from normwatch import optim
from normwatch.detect import Layer, detect
from normwatch.equilibrium_init import LayerScale, equilibrium_init
from normwatch.watcher import Watcher, attach

__version__ = "0.1.0"
__all__ = ["Layer", "LayerScale", "Watcher", "__version__", "attach", "detect", "equilibrium_init", "optim"]
