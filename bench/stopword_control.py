"""The control of BENCHMARKS.md's stop-word comparison: `python -m solution ...` with scikit-learn's English stop
words in place of solution/stopwords.py's list (what the code used before the list shipped), everything else
unchanged. Pair it with a run of the shipped list on the same data and folds: ./run.sh compare ...
Usage: .venv/bin/python bench/stopword_control.py all data_dir=... out_dir=... models=bilstm,tfidf,minilm
"""
import sys

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

import solution.text
from solution.cli import main

solution.text.STOP_WORDS = frozenset(ENGLISH_STOP_WORDS)
sys.exit(main(sys.argv[1:]))
