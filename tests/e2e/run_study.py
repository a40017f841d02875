"""``python -m experiments.study`` with the toy task registered (the study CLI under test)."""

import sys

import toy

from experiments import study

if __name__ == "__main__":
    toy.register()
    sys.exit(study.main())
