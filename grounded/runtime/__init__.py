"""Where and how models compute: device and precision choice, fast kernels swapped into transformers models,
memory reuse, subnormal flushing and workarounds for library bugs. Imports only :mod:`grounded.core`."""
