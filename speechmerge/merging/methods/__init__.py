"""Every merge method, one module per family; importing this package registers them all."""

from speechmerge.merging.methods import averaging, lors, task_vectors  # noqa: F401
