"""The English stop words captions lose when text.stopwords=true, shipped with the code so every machine uses the same.

nltk's English list, less its entries with an apostrophe (the [a-z]+ tokeniser splits "don't" into "don" and "t",
which are in) and less the 12 words that place or move one thing against another: into, up, down, out, off, over,
under, above, below, between, through, against ("a plane taking off", "a cat under a car", "a bus driving down the
street"). What is left, 141 words, is function words: articles, pronouns, auxiliaries, conjunctions, prepositions
without a place (of, for, with, to, from, ...), the generic in/on/at/by, quantifiers and adverbs. The list used to
come from the nltk data when installed, else from scikit-learn's ENGLISH_STOP_WORDS, which also drops object, number
and place cues such as "fire" (hydrant, truck), "two", "front", "top", "side", "behind" and "back": one command
trained different models on different machines.
"""
from __future__ import annotations

STOP_WORDS = frozenset("""
    a an the this that these those
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
    it its itself they them their theirs themselves what which who whom
    am is are was were be been being have has had having do does did doing can will should
    and but if or because as until while nor so than
    of at by for with about to from in on during before after
    again further then once here there when where why how just now only own same such too very
    all any both each few more most other some no not
    s t d ll m o re ve y don ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn
    weren won wouldn
""".split())
