"""saxgpt-jax: a JAX/Flax SaxGPT that writes saxophone solos over jazz backing tracks.

Importing this package never imports torch: `saxgpt_jax.convert_torch` and the torch benchmark
reference import it lazily, and only they do. Run as `python -m saxgpt_jax.<tool>`, the package first
restarts the process once with a tuned malloc (glibc on transparent huge pages, or jemalloc with
SAXGPT_MALLOC=jemalloc; `saxgpt_jax/host_memory.py`).
"""

__version__ = '0.1.0'

from saxgpt_jax import host_memory as _host_memory

# `python -m saxgpt_jax.<tool>`: restart once with a tuned malloc (host_memory says why).
if (_host_memory.command_line_module() or '').startswith('saxgpt_jax.'):
  _host_memory.reexec_with_tuned_malloc()
