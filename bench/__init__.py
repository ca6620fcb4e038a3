"""tokenwire's benchmark suite; `python -m bench --quick` or `python bench/run.py --quick`."""
