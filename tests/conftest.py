"""The suite never writes to the user's compilation cache (nor reads it)."""

import os

os.environ['LAPERM_JAX_COMPILE_CACHE'] = '0'
