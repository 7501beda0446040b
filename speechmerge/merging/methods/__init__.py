"""Every merge method, one module per family; importing this package registers them all."""

from speechmerge.merging.methods import (  # noqa: F401
    averaging,
    data_aware,
    lors,
    parameter_space,
    sparsify,
    subspace,
    task_vectors,
)
