"""``python -m rlvr_jax.compile_check`` with the toy task registered (the CLI under test)."""

import toy

from rlvr_jax import compile_check

if __name__ == "__main__":
    toy.register()
    compile_check.main()
