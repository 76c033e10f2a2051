"""One file per merge method; importing this package registers every module in it (data-free ones
here, data-dependent ones written against the same registry)."""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
