"""ssl4gie.

Importing the package registers its OmegaConf resolvers (run-folder weights tag, SLURM tasks per node), so that
every process that resolves the config has them: see :mod:`ssl4gie.run.resolvers`.
"""

from ssl4gie.run import resolvers as _resolvers

_resolvers.register()
