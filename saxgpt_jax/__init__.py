"""saxgpt-jax: a JAX/Flax SaxGPT that writes saxophone solos over jazz backing tracks.

Importing this package never imports torch: `saxgpt_jax.convert_torch` and the torch benchmark
reference import it lazily, and only they do.
"""

__version__ = '0.1.0'
